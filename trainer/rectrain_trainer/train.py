"""The training loop: DDP setup, precision, optimizers, evaluation, checkpoints, preemption."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from rectrain_api.progress import Progress, TrainingMetrics
from rectrain_api.trainer_config import TrainerConfig

from . import checkpoint as ckpt
from .config import ConfigError, DistEnv
from .data import BatchLoader, Table, make_batch, read_criteo_tsv, open_binary_many, steps_per_epoch, synthetic_datasets
from .metrics import RankMetrics, log_loss, roc_auc
from .model import DLRM, coalesced_grad

log = logging.getLogger("rectrain.train")
# Opt out explicitly (the default), which also silences torch's per-process warning about it.
torch.sparse.check_sparse_tensor_invariants.disable()

# Exit code of a rank that stopped on SIGTERM after finishing its step and writing a checkpoint
# (128 + SIGTERM, what a shell reports for a process killed by SIGTERM). The operator should treat
# it as preemption (retryable, not counted as a failure). Kubeflow's ExitCode policy also treats
# 128-255 as retryable.
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"stopped by SIGTERM at step {step}" + (f", checkpoint {checkpoint}" if checkpoint else ""))
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class RunResult:
    step: int
    epoch: int
    total_steps: int
    train_loss: float | None
    auc: float | None
    logloss: float | None
    rows_skipped: int
    checkpoint: str | None
    samples_per_second: float | None
    history: list = field(default_factory=list)  # (step, smoothed global loss) at each log point


# ------------------------------------------------------------------------------------------------


def _pick_device(cfg: TrainerConfig, denv: DistEnv) -> torch.device:
    want = cfg.training.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("invalid trainer configuration:\n  training.device: cuda requested but no CUDA device is available")
        idx = denv.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    if want == "auto":
        log.info("no CUDA device: training on CPU")
    return torch.device("cpu")


def _load_data(cfg: TrainerConfig) -> tuple[Table, Table | None, float | None]:
    """(train, eval or None, oracle AUC of the planted model on eval or None)."""
    d, m = cfg.data, cfg.model
    if d.source == "synthetic":
        s = d.synthetic
        train, ev, pm = synthetic_datasets(m.numDenseFeatures, m.tableSizes, s.rows, s.evalRows, s.seed)
        return train, ev, roc_auc(ev.label, pm.logit(ev))
    if d.source == "criteo-tsv":
        train = read_criteo_tsv(d.paths, d.malformedRows)
        ev = read_criteo_tsv(d.evalPaths, d.malformedRows) if d.evalPaths else None
    else:
        train = open_binary_many(d.paths)
        ev = open_binary_many(d.evalPaths) if d.evalPaths else None
    if ev is None and d.evalFraction > 0 and len(train) > 1:
        n_eval = max(1, int(round(len(train) * d.evalFraction)))
        skipped = train.rows_skipped
        ev = train.slice(len(train) - n_eval, len(train))
        train = train.slice(0, len(train) - n_eval)
        ev.rows_skipped = 0
        train.rows_skipped = skipped
    for name, t in (("training", train), ("evaluation", ev)):
        if t is None:
            continue
        if t.dense.shape[1] != m.numDenseFeatures:
            raise ConfigError(f"invalid trainer configuration:\n  model.numDenseFeatures: is {m.numDenseFeatures} but the {name} data has {t.dense.shape[1]} dense features")
        if t.cat.shape[1] != len(m.tableSizes):
            raise ConfigError(f"invalid trainer configuration:\n  model.tableSizes: has {len(m.tableSizes)} tables but the {name} data has {t.cat.shape[1]} categorical features")
    if len(train) == 0:
        raise ConfigError("invalid trainer configuration:\n  data.paths: no training rows")
    return train, ev, None


def _make_optimizer(kind: str, params, lr: float):
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "sparseadam":
        return torch.optim.SparseAdam(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise ConfigError(f"unknown optimizer {kind!r}")


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _StopFlag:
    """Set by SIGTERM; the loop finishes the current step, checkpoints and exits."""

    def __init__(self):
        self.set = False
        self._old = None

    def install(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if not self.set:
            log.warning("SIGTERM: finishing the current step, then checkpointing and exiting with %d", PREEMPTED_EXIT_CODE)
        self.set = True

    def uninstall(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None


def _allreduce_sparse_grad(p: torch.Tensor, world: int, stop: bool) -> bool:
    """Average the fused embedding table's sparse gradient over ranks (what DDP does for sparse
    gradients) with two all_gathers: (row count, SIGTERM flag) per rank, then the rows, ids and
    values packed together. Returns whether any rank got SIGTERM."""
    grad = coalesced_grad(p.grad)
    rows, values = grad._indices()[0], grad._values()
    mine = torch.tensor([rows.numel(), int(stop)], dtype=torch.long, device=p.device)
    heads = mine.new_empty(world * 2)
    dist.all_gather_single(heads, mine)
    heads = heads.view(world, 2)
    sizes = heads[:, 0].tolist()
    send = _pack_rows(rows, values, max(sizes))
    recv = send.new_empty(world * send.shape[0], send.shape[1])
    dist.all_gather_single(recv, send)
    recv = recv.view(world, *send.shape)
    parts = [_unpack_rows(recv[r, :n], values.dtype) for r, n in enumerate(sizes)]
    merged, inverse = torch.unique(torch.cat([r for r, _ in parts]), return_inverse=True)
    summed = values.new_zeros(merged.numel(), values.shape[1])
    for (_, v), inv in zip(parts, inverse.split(sizes)):
        summed.index_add_(0, inv, v)
    p.grad = torch.sparse_coo_tensor(merged.unsqueeze(0), summed.div_(world), p.shape, is_coalesced=True, check_invariants=False)
    return bool(heads[:, 1].any())


def _pack_rows(rows: torch.Tensor, values: torch.Tensor, length: int) -> torch.Tensor:
    """[n] int64 row ids and [n, d] values -> [length, 8 + d*itemsize] bytes (zero padded), so one
    all_gather carries both."""
    n = rows.numel()
    out = torch.zeros(length, 8 + values.shape[1] * values.element_size(), dtype=torch.uint8, device=rows.device)
    out[:n, :8] = rows.unsqueeze(1).view(torch.uint8)
    out[:n, 8:] = values.contiguous().view(torch.uint8)
    return out


def _unpack_rows(packed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of _pack_rows; the values are a strided view into `packed`."""
    return packed[:, :8].contiguous().view(torch.long).squeeze(1), packed[:, 8:].view(dtype)


def _finish_sparse_grads(model: DLRM, denv: DistEnv, stop: bool) -> bool:
    """Make the embedding gradient ready for the sparse optimizer: averaged over ranks, or (one
    rank) flagged coalesced so the optimizer does not sort its rows again. Returns whether any
    rank got SIGTERM (`stop` here): the flags travel with the ranks' row counts."""
    (p,) = model.sparse_parameters()
    if denv.distributed:
        return _allreduce_sparse_grad(p, denv.world_size, stop)
    if p.grad is not None:
        p.grad = coalesced_grad(p.grad)
    return stop


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------------


def evaluate(model: DLRM, ev: Table, cfg: TrainerConfig, device: torch.device, denv: DistEnv) -> tuple[float, float]:
    """Exact AUC and logloss over the whole held-out set (each rank scores its part)."""
    sizes = np.asarray(cfg.model.tableSizes, dtype=np.int64)
    parts = np.array_split(np.arange(len(ev)), denv.world_size)
    mine = parts[denv.rank]
    logits = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(device, cfg.training.precision):
        for start in range(0, len(mine), 8192):
            b = make_batch(ev, mine[start : start + 8192], 0, sizes).to(device)
            logits.append(model(b.dense, b.cat).float().cpu())
    model.train(was_training)
    local = torch.cat(logits).numpy() if logits else np.empty(0, np.float32)
    if denv.distributed:
        gathered: list = [None] * denv.world_size
        dist.all_gather_object(gathered, local)
        scores = np.concatenate(gathered)
    else:
        scores = local
    labels = np.asarray(ev.label[np.concatenate(parts)])
    probs = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
    return roc_auc(labels, scores), log_loss(labels, probs)


def train(cfg: TrainerConfig, denv: DistEnv | None = None, *, reporter=None, progress_bar: bool = False) -> RunResult:
    """Run training to the end. Raises Preempted after checkpointing when SIGTERM arrives.

    The caller owns `reporter` (an object with update(Progress, TrainingMetrics)), used on rank 0.
    """
    denv = denv or DistEnv()
    tc = cfg.training
    device = _pick_device(cfg, denv)
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError("invalid trainer configuration:\n  training.precision: fp16 needs a CUDA device (use bf16 on CPU)")
    backend = tc.backend if tc.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    own_pg = False
    if denv.distributed and not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", rank=denv.rank, world_size=denv.world_size, **kw)
        own_pg = True
    stop = _StopFlag()
    stop.install()
    metrics = RankMetrics(denv.rank, cfg.reporting.metricsPort + denv.local_rank if cfg.reporting.metricsPort else 0)
    tb = _tensorboard(cfg) if denv.rank == 0 else None
    try:
        return _train(cfg, denv, device, reporter if denv.rank == 0 else None, progress_bar and denv.rank == 0, stop, metrics, tb)
    finally:
        stop.uninstall()
        metrics.close()
        if tb is not None:
            tb.close()
        if own_pg:
            dist.destroy_process_group()


def _tensorboard(cfg: TrainerConfig):
    if not cfg.reporting.tensorboardDir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("reporting.tensorboardDir is set but the tensorboard package is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(cfg.reporting.tensorboardDir)


def _train(cfg, denv: DistEnv, device, reporter, progress_bar, stop: _StopFlag, pm: RankMetrics, tb) -> RunResult:
    tc, oc = cfg.training, cfg.training.optimizer
    torch.manual_seed(tc.seed)
    train_t, eval_t, oracle = _load_data(cfg)
    rows_skipped = train_t.rows_skipped + (eval_t.rows_skipped if eval_t is not None else 0)
    pm.rows_skipped.set(rows_skipped)
    if rows_skipped:
        log.warning("%d malformed rows skipped (data.malformedRows: skip)", rows_skipped)
    if denv.rank == 0:
        log.info(
            "data: %d training rows, %d evaluation rows%s",
            len(train_t), len(eval_t) if eval_t is not None else 0,
            f", planted oracle AUC {oracle:.4f}" if oracle is not None else "",
        )

    model = DLRM(cfg.model).to(device)
    core = model
    if denv.distributed:
        # DDP averages the dense (MLP) gradients; the embeddings' sparse gradients are exchanged
        # by _allreduce_sparse_grads with plain all_gathers: gloo's sparse allreduce (what DDP
        # uses for sparse gradients) intermittently corrupted the heap in our 2-rank tests, and
        # NCCL has no sparse allreduce to speak of.
        emb_names = [n for n, _ in core.named_parameters() if n.startswith("embeddings.")]
        DDP._set_params_and_buffers_to_ignore_for_model(core, emb_names)
        for p in core.sparse_parameters():
            dist.broadcast(p.data, src=0)
        # The model's buffers are constants (row offsets, pair indices): no broadcast per forward.
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    opt_sparse = _make_optimizer(oc.sparse, core.sparse_parameters(), oc.sparseLearningRate or oc.learningRate)
    opt_dense = _make_optimizer(oc.dense, core.dense_parameters(), oc.learningRate)
    optimizers = [opt_sparse, opt_dense]
    base_lrs = [opt_sparse.param_groups[0]["lr"], opt_dense.param_groups[0]["lr"]]
    scaler = torch.amp.GradScaler("cuda") if tc.precision == "fp16" else None

    spe = steps_per_epoch(len(train_t), tc.batchSize, denv.world_size)
    total = spe * tc.epochs
    if tc.maxSteps is not None:
        total = min(total, tc.maxSteps)

    step, epoch, epoch_step = 0, 0, 0
    last_ckpt_step: int | None = None
    extra = {"torch_rng": torch.get_rng_state()}
    resumed = ckpt.resume_latest(cfg.checkpoint.directory, model, optimizers, scaler, extra, denv.rank, device)
    if resumed is not None:
        resume, meta = resumed
        torch.set_rng_state(extra["torch_rng"])
        step, epoch, epoch_step = meta["step"], meta["epoch"], meta["epochStep"]
        old_global = meta.get("globalBatch", tc.batchSize * denv.world_size)
        if old_global != tc.batchSize * denv.world_size:
            # Same epoch order, different global batch: continue from the same row of the epoch
            # (rounded down, so a few rows may be seen twice, none skipped).
            epoch_step = epoch_step * old_global // (tc.batchSize * denv.world_size)
            if denv.rank == 0:
                log.warning("checkpoint was written with global batch %d, now %d: continuing at batch %d of epoch %d",
                            old_global, tc.batchSize * denv.world_size, epoch_step, epoch)
        last_ckpt_step = step
        if denv.rank == 0:
            log.info("resumed from %s (step %d, epoch %d)", resume, step, epoch)

    def save_ckpt() -> str | None:
        nonlocal last_ckpt_step
        if not cfg.checkpoint.directory:
            return None
        if last_ckpt_step == step:
            return str(ckpt.step_dir(cfg.checkpoint.directory, step))
        p = ckpt.save(
            cfg.checkpoint.directory, step, model, optimizers, scaler,
            {"epoch": epoch, "epochStep": epoch_step, "totalSteps": total, "worldSize": denv.world_size,
             "globalBatch": tc.batchSize * denv.world_size, "time": _now()},
            denv.rank, cfg.checkpoint.keep, extra={"torch_rng": torch.get_rng_state()},
        )
        last_ckpt_step = step
        return str(p)

    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", desc="train", dynamic_ncols=True)

    auc = ll = None
    eval_step = None
    history: list = []
    last_loss: float | None = None
    window_sum = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, samples (this rank)
    win_t0 = time.perf_counter()
    win_samples = 0
    sps: float | None = None
    step_time_ewma: float | None = None
    wait_reported = 0.0
    pin = device.type == "cuda"

    def report_status():
        if reporter is None:
            return
        eta = None
        if step_time_ewma is not None and total:
            eta = max(0.0, (total - step) * step_time_ewma)
        # Rounded: these are read by people (kubectl get rtj columns), not fed back into training.
        prog = Progress(
            epoch=min(epoch, max(tc.epochs - 1, 0)), step=step, totalSteps=total,
            percent=round(100.0 * step / total, 2) if total else None,
            loss=_rounded(last_loss, 5), samplesPerSecond=_rounded(sps, 1), etaSeconds=_rounded(eta, 1),
            lastCheckpointStep=last_ckpt_step, updatedTime=_now(),
        )
        met = TrainingMetrics(auc=_rounded(auc if auc is not None and not math.isnan(auc) else None, 5),
                              logloss=_rounded(ll, 5), evalStep=eval_step, rowsSkipped=rows_skipped)
        reporter.update(prog, met)

    def do_eval():
        nonlocal auc, ll, eval_step
        if eval_t is None or len(eval_t) == 0:
            return
        auc, ll = evaluate(core, eval_t, cfg, device, denv)
        eval_step = step
        pm.auc.set(auc)
        if denv.rank == 0:
            msg = f"eval step={step} auc={auc:.4f} logloss={ll:.4f}" + (f" oracle_auc={oracle:.4f}" if oracle is not None else "")
            (bar.write if bar else log.info)(msg)
            if tb is not None:
                tb.add_scalar("eval/auc", auc, step)
                tb.add_scalar("eval/logloss", ll, step)
        report_status()

    report_status()
    model.train()
    done = step >= total
    while not done and epoch < tc.epochs:
        loader = BatchLoader(train_t, tc.batchSize, denv.world_size, denv.rank, tc.seed, epoch, cfg.model.tableSizes,
                             skip=epoch_step, workers=tc.dataLoaderWorkers, pin=pin)
        for batch in loader:
            t_step = time.perf_counter()
            batch = batch.to(device, non_blocking=pin)
            # Warmup: linear from lr/warmup to lr over warmupSteps.
            if oc.warmupSteps:
                f = min(1.0, (step + 1) / oc.warmupSteps)
                for o, lr in zip(optimizers, base_lrs):
                    for g in o.param_groups:
                        g["lr"] = lr * f
            with _autocast(device, tc.precision):
                logits = model(batch.dense, batch.cat)
            loss_sum = F.binary_cross_entropy_with_logits(logits.float(), batch.label, reduction="sum")
            # DDP averages gradients over ranks; scaling by world/global makes the result the
            # gradient of the mean loss over the global batch, whatever each rank's share.
            loss = loss_sum * (denv.world_size / batch.global_size)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            # Every rank learns here whether any got SIGTERM, so all stop after the same step and
            # checkpoint together.
            want_stop = _finish_sparse_grads(core, denv, stop.set)
            if scaler is not None:
                for o in optimizers:
                    scaler.step(o)
                scaler.update()
            else:
                for o in optimizers:
                    o.step()
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            step += 1
            epoch_step += 1
            n = batch.label.shape[0]
            window_sum += torch.stack([loss_sum.detach().double(), torch.tensor(float(n), dtype=torch.float64, device=device)])
            win_samples += batch.global_size
            pm.samples.inc(n)
            pm.step.set(step)
            if bar:
                bar.update(1)

            dt = time.perf_counter() - t_step
            step_time_ewma = dt if step_time_ewma is None else 0.9 * step_time_ewma + 0.1 * dt
            at_end = step >= total
            if step % cfg.reporting.logEverySteps == 0 or at_end or want_stop:
                ws = window_sum.clone()
                if denv.distributed:
                    dist.all_reduce(ws)
                if ws[1] > 0:
                    last_loss = float(ws[0] / ws[1])
                window_sum.zero_()
                el = time.perf_counter() - win_t0
                sps = win_samples / el if el > 0 else None
                win_t0, win_samples = time.perf_counter(), 0
                history.append((step, last_loss))
                pm.loss.set(last_loss if last_loss is not None else float("nan"))
                if sps is not None:
                    pm.sps.set(sps / denv.world_size)
                pm.data_wait.inc(max(0.0, loader.wait_seconds - wait_reported))
                wait_reported = loader.wait_seconds
                if device.type == "cuda":
                    pm.gpu_mem.set(torch.cuda.memory_allocated(device))
                if denv.rank == 0:
                    if bar:
                        bar.set_postfix(loss=f"{last_loss:.4f}", sps=f"{sps:,.0f}" if sps else "-", refresh=False)
                    else:
                        log.info("step=%d/%d epoch=%d loss=%.5f samples_per_s=%.0f", step, total, epoch, last_loss or float("nan"), sps or 0.0)
                    if tb is not None:
                        tb.add_scalar("train/loss", last_loss, step)
                        if sps:
                            tb.add_scalar("train/samples_per_second", sps, step)
                report_status()
            if want_stop:
                path = save_ckpt()
                report_status()
                if bar:
                    bar.close()
                raise Preempted(step, path)
            if cfg.checkpoint.directory and step % cfg.checkpoint.everySteps == 0 and not at_end:
                save_ckpt()
                report_status()
            if tc.evalEverySteps and step % tc.evalEverySteps == 0 and not at_end:
                do_eval()
            if at_end:
                done = True
                break
        else:
            epoch += 1
            epoch_step = 0
            continue
        break
    do_eval()
    final = save_ckpt()
    report_status()
    if bar:
        bar.close()
    if denv.rank == 0 and auc is not None:
        print(f"final: step={step} loss={last_loss if last_loss is not None else float('nan'):.5f} auc={auc:.4f} logloss={ll:.4f}" + (f" oracle_auc={oracle:.4f}" if oracle is not None else ""), flush=True)
    return RunResult(step, epoch, total, last_loss, auc, ll, rows_skipped, final, sps, history)
