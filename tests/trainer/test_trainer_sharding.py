"""Sharded embedding tables (model.sharding): the planner, sharding-independent initial values,
2 gloo ranks with table-wise / row-wise tables against one replicated rank, and resuming across
world sizes and shardings (mixed tables) through DCP resharding."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from rectrain_trainer import checkpoint as ckpt
from rectrain_trainer import model as model_module
from rectrain_trainer.config import parse_config
from rectrain_trainer.sharding_plan import make_plan, place_tables, rank_loads, table_bytes
from rectrain_trainer.train import PREEMPTED_EXIT_CODE, train
from support import wait_for
from trainer_helpers import final_line, finish, start_ranks, tiny_config

# Uneven tables (400 rows split 200/200, 7 rows split 4/3) and a budget that makes auto mix all
# three kinds: the 400-row table row-wise, the 150-row ones table-wise on either rank, the rest replicated.
TABLES = [400, 150, 150, 7, 20]
MIXED_BUDGET_GIB = 25_000 / 2**30


def test_table_wise_placement_is_greedy_largest_first_onto_the_least_loaded_rank():
    # 50->0, 40->1, 30->1 (40 < 50), 20->0 (50 < 70), 10->0 (a tie at 70: the lower rank)
    assert place_tables([10, 50, 30, 20, 40], 2) == [0, 0, 1, 0, 1]
    assert place_tables([5, 5, 5], 4) == [0, 1, 2]


def test_auto_keeps_replicas_when_they_fit_and_shards_the_largest_tables_when_not():
    rows = [2_000_000] * 4 + [100] * 4
    replica = sum(table_bytes(r, 32, "adagrad") for r in rows)
    assert make_plan("auto", rows, 32, 1, "adagrad", 1).kinds == ("replicated",) * 8  # one rank: nothing to shard
    assert make_plan("auto", rows, 32, 2, "adagrad", replica).kinds == ("replicated",) * 8
    half = make_plan("auto", rows, 32, 2, "adagrad", replica // 2 + 100_000)
    assert half.kinds == ("table",) * 4 + ("replicated",) * 4 and sorted(half.owners[:4]) == [0, 0, 1, 1]
    assert max(rank_loads(half, rows, 32, "adagrad")) <= replica // 2 + 100_000
    # One table bigger than a rank's share: it is split by rows instead.
    mixed = make_plan("auto", TABLES, 8, 2, "adagrad", int(MIXED_BUDGET_GIB * 2**30))
    assert mixed.kinds == ("row", "table", "table", "replicated", "replicated")
    assert sorted(mixed.owners[1:3]) == [0, 1]
    assert make_plan("table", TABLES, 8, 1, "adagrad", 0).kinds == ("replicated",) * 5


def test_initial_values_do_not_depend_on_how_a_table_is_split(monkeypatch):
    monkeypatch.setattr(model_module, "INIT_BLOCK_ROWS", 16)  # many blocks, blocks cut by the split
    whole = torch.empty(100, 4)
    model_module.init_table_rows(whole, 3, 100, 0, seed=7)
    parts = [torch.empty(n, 4) for n in (37, 40, 23)]
    start = 0
    for part in parts:
        model_module.init_table_rows(part, 3, 100, start, seed=7)
        start += part.shape[0]
    assert torch.equal(torch.cat(parts), whole)
    assert float(whole.abs().max()) <= 0.1 and float(whole.std()) > 0.04  # uniform in +-sqrt(1/100)
    other = torch.empty(100, 4)
    model_module.init_table_rows(other, 4, 100, 0, seed=7)
    assert not torch.equal(other, whole)  # each table its own values


def _config(directory: Path, sharding: str, sparse: str = "adagrad", **training) -> dict:
    return tiny_config(
        model={"embeddingDim": 8, "tableSizes": TABLES, "numDenseFeatures": 4, "bottomMlp": [16, 8], "topMlp": [16],
               "sharding": sharding, "shardingMemoryBudgetGiB": MIXED_BUDGET_GIB},
        data={"source": "synthetic", "synthetic": {"rows": 3201, "evalRows": 1000, "seed": 5}},
        training={"globalBatchSize": 64, "optimizer": {"sparse": sparse, "learningRate": 0.05}, **training},
        checkpoint={"directory": str(directory), "everySteps": 10},
        reporting={"metricsPort": 0, "logEverySteps": 10_000},
    )


def _assert_params_close(a: dict, b: dict, tol: float):
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, f"max parameter difference {worst}"


_references: dict = {}


def _replicated_run(directory: Path, sparse: str = "adagrad"):
    """One rank, every table replicated, 50 steps: the reference (once per sparse optimizer)."""
    if sparse not in _references:
        result = train(parse_config(_config(directory, "replicated", sparse, maxSteps=50)))
        _references[sparse] = result, ckpt.load_model_tensors(ckpt.latest_checkpoint(directory))
    return _references[sparse]


@pytest.fixture
def replicated_run(tmp_path_factory):
    return _replicated_run(tmp_path_factory.mktemp("replicated"))


# Adagrad is blind to a gradient's scale (a shard's sum not divided by the world size would pass):
# row-wise runs with sgd, which is not.
@pytest.mark.parametrize("sharding,sparse,kinds", [("table", "adagrad", "5 table"), ("row", "sgd", "5 row")])
def test_two_sharded_ranks_match_one_replicated_rank(tmp_path, tmp_path_factory, sharding, sparse, kinds):
    reference, reference_params = _replicated_run(tmp_path_factory.mktemp("replicated"), sparse)
    res = finish(start_ranks(_config(tmp_path, sharding, sparse, maxSteps=50), 2))
    assert [rc for rc, _, _ in res] == [0, 0], res[0][2][-3000:] + res[1][2][-3000:]
    assert f"sharding {sharding}: {kinds} over 2 ranks" in res[0][2]
    final = final_line(res[0][1])
    assert final["step"] == reference.step == 50
    assert abs(final["loss"] - reference.train_loss) < 1e-3
    assert abs(final["auc"] - reference.auc) < 0.002
    # The sharded checkpoint holds whole tables (each rank wrote its shards), equal to the replicas.
    _assert_params_close(ckpt.load_model_tensors(ckpt.latest_checkpoint(tmp_path)), reference_params, 1e-3)
    # Each rank logged the embedding rows it holds: a share, not a replica.
    for rank, (_, _, err) in enumerate(res):
        held = re.search(rf"embeddings rank {rank}: (\d+) rows", err)
        assert held and 0 < int(held.group(1)) < sum(TABLES), err[-2000:]


def test_resume_reshards_across_world_sizes_and_shardings(tmp_path, replicated_run):
    """An elastic job's resize both ways: 1 replicated rank trains 20 steps, 2 ranks resume with
    mixed sharding (row-wise, table-wise and replicated tables: each loads its shards from the
    replicated checkpoint) to step 40, 1 replicated rank resumes from their shards and finishes;
    it ends where the uninterrupted replicated run ends."""
    directory = tmp_path / "elastic"
    assert train(parse_config(_config(directory, "replicated", maxSteps=20))).step == 20
    res = finish(start_ranks(_config(directory, "auto", maxSteps=40), 2))
    assert [rc for rc, _, _ in res] == [0, 0], res[0][2][-3000:] + res[1][2][-3000:]
    assert "sharding auto: 2 replicated, 2 table, 1 row over 2 ranks" in res[0][2]
    assert f"resumed from {directory}/step-00000020" in res[0][2]
    assert final_line(res[0][1])["step"] == 40
    last = train(parse_config(_config(directory, "replicated", maxSteps=50)))
    reference, reference_params = replicated_run
    assert last.step == 50
    assert abs(last.auc - reference.auc) < 0.002  # (the training loss window restarts at a resume)
    _assert_params_close(ckpt.load_model_tensors(ckpt.latest_checkpoint(directory)), reference_params, 1e-3)


def test_sigterm_to_one_rank_stops_every_sharded_rank_at_the_same_step(tmp_path):
    """With no replicated table the SIGTERM flags travel with the lookups' counts: rank 1 alone gets the
    notice, both ranks stop after the same step and write one sharded checkpoint together."""
    cfg = _config(tmp_path, "row", epochs=50)
    procs = start_ranks(cfg, 2)
    try:
        wait_for(lambda: ckpt.complete_checkpoints(tmp_path), timeout=120, what="a first checkpoint")
        procs[1].send_signal(signal.SIGTERM)
        res = finish(procs, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [rc for rc, _, _ in res] == [PREEMPTED_EXIT_CODE] * 2, res[0][2][-3000:] + res[1][2][-3000:]
    step = ckpt.complete_checkpoints(tmp_path)[-1][0]
    assert all(f"stopped by SIGTERM at step {step}" in err for _, _, err in res)
    assert sorted(p.name for p in ckpt.latest_checkpoint(tmp_path).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_a_rank_asks_for_each_distinct_row_once_and_gets_its_lookups_summed_gradient(tmp_path, monkeypatch):
    """The sharded lookup deduplicates before the exchange: a batch that repeats rows sends each
    distinct row once, and the expanded embeddings and the shard's gradient are the replicated
    table's (one gloo rank owning every table, so the all_to_alls are real but local)."""
    from rectrain_trainer import sharding
    from rectrain_trainer.model import EmbeddingTables
    from rectrain_trainer.sharding_plan import ShardingPlan

    sizes = [50, 30]
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        sent = []
        real = torch.distributed.all_to_all_single
        monkeypatch.setattr(sharding.dist, "all_to_all_single",
                            lambda out, inp, *a, **kw: (sent.append(inp.shape[0]), real(out, inp, *a, **kw))[1])
        tables = sharding.ShardedEmbeddingTables(sizes, 4, ShardingPlan(1, ("table", "table"), (0, 0)), 0, seed=5,
                                                 device=torch.device("cpu"))
        replica = EmbeddingTables(sizes, 4, seed=5)
        ids = torch.tensor([[3, 7], [3, 9], [3, 7], [41, 7]])  # distinct: 3, 41 | 7, 9
        out = tables(ids)
        assert sent[1] == 4  # the ids exchange: 4 distinct rows of 8 lookups
        expected = replica(ids)
        assert torch.equal(out, expected)
        weights = torch.randn(out.shape)
        (out * weights).sum().backward()
        (expected * weights).sum().backward()
        assert torch.allclose(tables.shard.grad.to_dense(), replica.weight.grad.to_dense(), atol=1e-6)
    finally:
        torch.distributed.destroy_process_group()
