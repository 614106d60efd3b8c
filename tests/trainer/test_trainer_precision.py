"""Precision: bf16 reaches every matmul (the interaction's too), tf32 is fp32 on CPU and true fp32 is
asked for explicitly on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rectrain_trainer import train as train_mod
from rectrain_trainer.config import parse_config
from rectrain_trainer.model import DLRM
from trainer_helpers import tiny_config

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class _MatmulDtypes(TorchDispatchMode):
    """Records (op, input dtypes) of every matrix product that runs."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, set]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.seen.append((func.__name__.split(".")[0], {a.dtype for a in args if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_bf16_reaches_every_matmul_forward_and_backward(interaction):
    cfg = parse_config(tiny_config(model={**tiny_config()["model"], "interaction": interaction}))
    model = DLRM(cfg.model)
    dense, cat = torch.rand(16, 4), torch.randint(0, 20, (16, 4))
    recorder = _MatmulDtypes()
    with recorder:
        with train_mod._autocast(torch.device("cpu"), "bf16"):
            logits = model(dense, cat)
        logits.float().sum().backward()
    ops = {name for name, _ in recorder.seen}
    assert {"addmm", "mm"} <= ops and ("bmm" in ops) == (interaction == "dot")
    assert all(dtypes == {torch.bfloat16} for _, dtypes in recorder.seen), recorder.seen


def test_tf32_trains_exactly_like_fp32_on_cpu():
    base = tiny_config(training={**tiny_config()["training"], "maxSteps": 8, "device": "cpu"})  # CPU: on CUDA tf32 differs
    results = []
    for precision in ("fp32", "tf32"):
        base["training"]["precision"] = precision
        results.append(train_mod.train(parse_config(base)))
    assert results[0].train_loss == results[1].train_loss and results[0].auc == results[1].auc


@pytest.mark.parametrize("precision,want", [("fp32", "highest"), ("tf32", "high"), ("bf16", "highest"), ("fp16", "highest")])
def test_cuda_matmul_precision_is_set_explicitly(precision, want):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # whatever the process had before
        train_mod._set_matmul_precision(torch.device("cuda", 0), precision)
        assert torch.get_float32_matmul_precision() == want
        torch.set_float32_matmul_precision("medium")
        train_mod._set_matmul_precision(torch.device("cpu"), precision)
        assert torch.get_float32_matmul_precision() == "medium"  # CPU: tf32 means fp32, nothing touched
    finally:
        torch.set_float32_matmul_precision(before)
