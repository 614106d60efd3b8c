"""Exact AUC/logloss, the per-rank /metrics endpoint, and configuration loading/validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import requests

from rectrain_api.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from rectrain_trainer.cli import CONFIG_ERROR_EXIT_CODE, main
from rectrain_trainer.config import ConfigError, dist_env, load_config_env, parse_config
from rectrain_trainer.metrics import RankMetrics, log_loss, roc_auc
from trainer_helpers import free_port, tiny_config


def brute_auc(y, s):
    pos = [b for a, b in zip(y, s) if a]
    neg = [b for a, b in zip(y, s) if not a]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_is_exact_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        s = rng.integers(0, 8, 60).astype(float)  # many ties
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_logloss():
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert log_loss([1], [1.0]) < 1e-6  # clipped, finite
    assert math.isfinite(log_loss([1], [0.0]))


def test_rank_serves_prometheus_metrics():
    port = free_port()
    m = RankMetrics(rank=3, port=port)
    try:
        m.step.set(42)
        m.samples.inc(1000)
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'rectrain_trainer_step{rank="3"} 42.0' in body
        assert 'rectrain_trainer_samples_total{rank="3"} 1000.0' in body
        assert "rectrain_trainer_data_wait_seconds_total" in body
    finally:
        m.close()


def test_bad_config_fails_fast_naming_the_field(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("training:\n  batchSize: 0\n  precison: bf16\n")
    assert main(["--config", str(f)]) == CONFIG_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "training.batchSize" in err and "training.precison" in err

    with pytest.raises(ConfigError, match=r"model.bottomMlp: the last size \(16\) must equal model.embeddingDim \(8\)"):
        parse_config({"model": {"embeddingDim": 8, "bottomMlp": [16]}})
    with pytest.raises(ConfigError, match="data.paths: required"):
        parse_config({"data": {"source": "binary"}})
    with pytest.raises(ConfigError, match=TRAINER_CONFIG_ENV):
        load_config_env({TRAINER_CONFIG_ENV: "{not json"})


@pytest.mark.parametrize(
    "section,message",
    [
        ({"data": {"source": "criteo-tsv"}}, "data.paths: required when data.source is criteo-tsv"),
        ({"model": {"tableSizes": [0, 5]}}, "model.tableSizes[0]: Input should be greater than or equal to 1"),
        ({"model": {"bottomMlp": []}}, "model.bottomMlp: needs at least one layer"),
        ({"training": {"precision": "fp16", "device": "cpu"}}, "training.precision: fp16 needs a CUDA device"),
    ],
)
def test_config_rules_are_the_operators(section, message):
    """The trainer refuses with the shared rules (rectrain_api.validation), in its message style."""
    with pytest.raises(ConfigError) as refused:
        parse_config(section)
    assert str(refused.value).startswith(f"invalid trainer configuration:\n  {message}"), refused.value


def test_no_dense_features_need_no_matching_bottom_mlp():
    cfg = parse_config({"model": {"numDenseFeatures": 0, "embeddingDim": 32, "bottomMlp": [64, 16]}})
    assert cfg.model.embeddingDim == 32


def test_config_from_env_and_file_and_whole_manifest(tmp_path, capsys):
    cfg = tiny_config(training={"precision": "bf16"})
    assert load_config_env({TRAINER_CONFIG_ENV: json.dumps(cfg)}).training.precision == "bf16"
    manifest = {"apiVersion": "rectrain.io/v1alpha1", "kind": "RecTrainJob", "spec": {"image": "x", "trainer": cfg}}
    f = tmp_path / "job.json"
    f.write_text(json.dumps(manifest))
    assert main(["--config", str(f), "--check"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    assert main(["--config", str(tmp_path / "missing.yaml")]) == CONFIG_ERROR_EXIT_CODE


def test_fp16_on_cpu_is_refused_with_the_field():
    """parse_config refuses fp16 with device cpu; train() still refuses it for a config that skipped
    parse_config (and for device auto on a machine without CUDA)."""
    from rectrain_trainer.train import train

    section = tiny_config(training={"precision": "fp16", "device": "cpu"})
    with pytest.raises(ConfigError, match="training.precision: fp16 needs a CUDA device"):
        parse_config(section)
    with pytest.raises(ConfigError, match="training.precision: fp16 needs a CUDA device"):
        train(TrainerConfig.model_validate(section))


def test_dist_env():
    assert dist_env({}).world_size == 1
    d = dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (d.rank, d.world_size, d.distributed) == (1, 2, True)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        dist_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="RANK=2"):
        dist_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})


def test_tensorboard_without_the_package_warns_and_trains(tmp_path, caplog):
    import importlib.util

    from rectrain_trainer.train import train

    cfg = parse_config(tiny_config(reporting={"metricsPort": 0, "tensorboardDir": str(tmp_path / "tb")}))
    r = train(cfg)
    assert r.step == 63
    if importlib.util.find_spec("tensorboard") is None:
        assert any("tensorboard package is not installed" in m for m in caplog.messages)
    else:
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_missing_cuda_device_is_a_retryable_failure_not_a_configuration_error(tmp_path, capsys):
    """device: cuda on a node without a working GPU is a node fault: exit 1 (the gang restarts,
    perhaps elsewhere), never 2 (which fails the job at once)."""
    import torch

    from rectrain_api import exit_codes

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    f = tmp_path / "cuda.yaml"
    f.write_text(json.dumps(tiny_config(training={"device": "cuda", "backend": "gloo"})))
    assert main(["--config", str(f), "--progress", "off"]) == exit_codes.FAILED
    assert "no CUDA device" in capsys.readouterr().err
