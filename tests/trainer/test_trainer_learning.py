"""The trainer learns: planted synthetic data, bf16 vs fp32, DCN, and the file-based sources."""

from __future__ import annotations

import numpy as np
import pytest

from rectrain_trainer.config import parse_config
from rectrain_trainer.data import preprocess
from rectrain_trainer.train import train
from trainer_helpers import tiny_config, write_criteo


def learn_config(**over):
    return tiny_config(
        data={"source": "synthetic", "synthetic": {"rows": 20000, "evalRows": 5000, "seed": 3}},
        training={"epochs": 3, "batchSize": 256, "seed": 1, "optimizer": {"learningRate": 0.05}, **over},
        reporting={"metricsPort": 0, "logEverySteps": 1000},
    )


def test_learns_planted_model_to_near_oracle_auc():
    from rectrain_trainer.data import synthetic_datasets
    from rectrain_trainer.metrics import roc_auc

    cfg = parse_config(learn_config())
    r = train(cfg)
    _tr, ev, pm = synthetic_datasets(4, cfg.model.tableSizes, 20000, 5000, 3)
    oracle = roc_auc(ev.label, pm.logit(ev))
    assert r.step == r.total_steps == 3 * 79
    assert r.auc >= 0.97 * oracle, (r.auc, oracle)
    # and it is learning, not guessing: loss fell from the first window to the last
    assert r.history[-1][1] < 0.9 * r.history[0][1] or r.history[0][0] == r.step


def test_bf16_tracks_fp32():
    fp32 = train(parse_config(learn_config()))
    bf16 = train(parse_config(learn_config(precision="bf16")))
    assert abs(bf16.train_loss - fp32.train_loss) <= 0.01 * fp32.train_loss, (fp32.train_loss, bf16.train_loss)
    assert abs(bf16.auc - fp32.auc) < 0.01


def test_dcn_interaction_and_other_optimizers_learn():
    cfg = learn_config(optimizer={"sparse": "sparseadam", "dense": "adam", "learningRate": 0.005, "warmupSteps": 20})
    cfg["model"]["interaction"] = "dcn"
    r = train(parse_config(cfg))
    assert r.auc > 0.85, r.auc


@pytest.mark.parametrize("source", ["criteo-tsv", "binary"])
def test_trains_on_criteo_files_counting_skipped_rows(tmp_path, source):
    rng = np.random.default_rng(0)
    tsv = tmp_path / "day_0"
    write_criteo(tsv, 3000, rng, bad_every=1000)  # 3 malformed rows
    paths = [str(tsv)]
    if source == "binary":
        preprocess(paths, str(tmp_path / "bin"), malformed="skip", progress=False)
        paths = [str(tmp_path / "bin")]
    cfg = tiny_config(
        model={"embeddingDim": 8, "tableSizes": [32] * 26, "numDenseFeatures": 13, "bottomMlp": [16, 8], "topMlp": [16]},
        data={"source": source, "paths": paths, "evalFraction": 0.2, "malformedRows": "skip"},
        training={"epochs": 4, "batchSize": 128, "optimizer": {"learningRate": 0.05}},
    )
    r = train(parse_config(cfg))
    assert r.rows_skipped == 3
    assert r.total_steps == 4 * 19  # 2400 training rows / 128
    assert r.auc > 0.75  # feature C1 < 10 decides the label 80/20: oracle ~0.8
