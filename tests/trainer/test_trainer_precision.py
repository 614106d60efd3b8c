"""Precision: bf16 reaches every matmul (the interaction's too), tf32 is fp32 on CPU, true fp32 is
asked for explicitly on CUDA, and fp16's GradScaler sees the embeddings' gradient too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])  # CUDA: the sink's fixed-size padded row buffers
@pytest.mark.parametrize("single_process", [True, False])  # row gradients handed to a RowGrads sink / a COO .grad
@pytest.mark.parametrize("sparse", ["adagrad", "rowwise_adagrad", "sgd"])
def test_fp16_overflow_only_in_the_embedding_gradient_lowers_the_scale_and_skips_both(sparse, single_process, device):
    """fp16's GradScaler wiring of the train loop (_make_sparse_optimizer, _make_optimizer,
    _scaled_step): an inf only in the embedding gradient lowers the scale and skips both
    optimizers; a finite step afterwards updates both."""
    cfg = parse_config(tiny_config())
    torch.manual_seed(0)
    model = DLRM(cfg.model).to(device)
    optimizers = [train_mod._make_sparse_optimizer(sparse, model.sparse_parameters(), 0.05, single_process=single_process),
                  train_mod._make_optimizer("adagrad", model.dense_parameters(), 0.05)]
    scaler = torch.amp.GradScaler(device, init_scale=1024.0)
    dense, cat, label = torch.rand(32, 4), torch.randint(0, 20, (32, 4)), torch.randint(0, 2, (32,)).float()
    dense, cat, label = dense.to(device), cat.to(device), label.to(device)
    poison = {"on": True}

    def embedding_grad_hook(_module, _inputs, output):  # what reaches the lookup's backward only
        output.register_hook(lambda g: g.index_fill(0, torch.tensor([3], device=g.device), float("inf")) if poison["on"] else g)

    model.embeddings.register_forward_hook(embedding_grad_hook)

    def snapshot():
        return [p.detach().clone() for p in model.parameters()]

    def step():
        loss = F.binary_cross_entropy_with_logits(model(dense, cat), label, reduction="sum")
        scaler.scale(loss).backward()
        dense_grads = [p.grad for p in model.dense_parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in dense_grads)  # the overflow is the embeddings' only
        train_mod._scaled_step(scaler, optimizers)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    before = snapshot()
    step()
    assert scaler.get_scale() == 512.0
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot()))  # neither the tables nor the MLPs moved
    poison["on"] = False
    step()
    assert scaler.get_scale() == 512.0
    moved = {name: not torch.equal(a, b) for (name, _), a, b in zip(model.named_parameters(), before, snapshot())}
    assert moved.pop("embeddings.weight") and all(moved.values()), moved  # both optimizers stepped
