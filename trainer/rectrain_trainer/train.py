"""The training loop: DDP setup, precision, optimizers, evaluation, checkpoints, preemption.

`train` sets up the process (device, process group, SIGTERM handler, metrics) and `_train` runs:

    run = _set_up(...)               # data, model (DDP), optimizers, step count: fixed for the run
    state = _resume(run)             # the loop's changing state (LoopState), from a checkpoint if any
    while there are steps left:
        _train_epoch(run, state)     # each batch: _train_step, then at log points _close_log_window,
                                     # on SIGTERM _stop_preempted, every N steps a checkpoint / an eval
    return _finish(run, state)       # final eval, checkpoint and status
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import signal
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from rectrain_api.exit_codes import PREEMPTED as PREEMPTED_EXIT_CODE
from rectrain_api.progress import Progress, TrainingMetrics, readable_job_uid
from rectrain_api.trainer_config import JOB_UID_ENV, TrainerConfig

from . import checkpoint as ckpt
from .config import ConfigError, DistEnv
from .data import (Batch, BatchLoader, DeviceBatchLoader, DeviceTable, Table, make_batch, open_binary_many, read_criteo_tsv,
                   steps_per_epoch, synthetic_datasets)
from .fused_sparse import SPARSE_KINDS, FusedSparseOptimizer, attach_row_grads, detach_row_grads, row_grads_of
from .host_allocator import retain_freed_memory
from .loop_state import LoopState, LossWindow
from .metrics import RankMetrics, log_loss, roc_auc
from .model import DLRM, EmbeddingTables
from .sharding import ShardedEmbeddingTables
from .sharding_plan import STATE_PER_VALUE, ShardingPlan, default_budget, make_plan
from .sparse_exchange import finish_sparse_grads

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "RunResult", "evaluate", "train"]

log = logging.getLogger("rectrain.train")
# Opt out explicitly (the default), which also silences torch's per-process warning about it.
torch.sparse.check_sparse_tensor_invariants.disable()

# PREEMPTED_EXIT_CODE (143 = 128 + SIGTERM, what a shell reports for a process killed by SIGTERM):
# the exit code of a rank that stopped on SIGTERM after finishing its step and writing a
# checkpoint. The operator treats it as preemption (retryable, not counted as a failure); see
# rectrain_api.exit_codes.


class DeviceUnavailable(RuntimeError):
    """The device the configuration asks for is not there (exit code: a failure, retried)."""


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
# Setting up


def _pick_device(cfg: TrainerConfig, denv: DistEnv) -> torch.device:
    """CPU, or the CUDA device of this local rank: cuda:LOCAL_RANK when the process sees a device
    per local rank (torchrun with several ranks per host), cuda:0 when it sees one device only
    (one GPU per pod, or CUDA_VISIBLE_DEVICES set per rank)."""
    want = cfg.training.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            # The spec asked for GPUs and got a node without a working one: a node fault, not a
            # configuration error, so a gang restart (perhaps elsewhere) may fix it.
            raise DeviceUnavailable("training.device: cuda requested but this process sees no CUDA device (driver or node fault?)")
        count = torch.cuda.device_count()
        index = denv.local_rank % count
        if denv.local_rank >= count > 1:
            log.warning("LOCAL_RANK=%d but this process sees %d CUDA devices: sharing cuda:%d with local rank %d",
                        denv.local_rank, count, index, index)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if want == "auto":
        log.info("no CUDA device: training on CPU")
    return torch.device("cpu")


def _load_data(cfg: TrainerConfig) -> tuple[Table, Table | None, float | None]:
    """(train, eval or None, oracle AUC of the planted model on eval or None)."""
    data_cfg, model_cfg = cfg.data, cfg.model
    if data_cfg.source == "synthetic":
        synthetic = data_cfg.synthetic
        train_table, eval_table, planted = synthetic_datasets(
            model_cfg.numDenseFeatures, model_cfg.tableSizes, synthetic.rows, synthetic.evalRows, synthetic.seed)
        return train_table, eval_table, roc_auc(eval_table.label, planted.logit(eval_table))
    if data_cfg.source == "criteo-tsv":
        train_table = read_criteo_tsv(data_cfg.paths, data_cfg.malformedRows)
        eval_table = read_criteo_tsv(data_cfg.evalPaths, data_cfg.malformedRows) if data_cfg.evalPaths else None
    else:
        train_table = open_binary_many(data_cfg.paths)
        eval_table = open_binary_many(data_cfg.evalPaths) if data_cfg.evalPaths else None
    if eval_table is None and data_cfg.evalFraction > 0 and len(train_table) > 1:
        n_eval = max(1, int(round(len(train_table) * data_cfg.evalFraction)))
        skipped = train_table.rows_skipped
        eval_table = train_table.slice(len(train_table) - n_eval, len(train_table))
        train_table = train_table.slice(0, len(train_table) - n_eval)
        eval_table.rows_skipped = 0
        train_table.rows_skipped = skipped
    for name, table in (("training", train_table), ("evaluation", eval_table)):
        if table is None:
            continue
        if table.dense.shape[1] != model_cfg.numDenseFeatures:
            raise ConfigError(f"invalid trainer configuration:\n  model.numDenseFeatures: is {model_cfg.numDenseFeatures} but the {name} data has {table.dense.shape[1]} dense features")
        if table.cat.shape[1] != len(model_cfg.tableSizes):
            raise ConfigError(f"invalid trainer configuration:\n  model.tableSizes: has {len(model_cfg.tableSizes)} tables but the {name} data has {table.cat.shape[1]} categorical features")
    if len(train_table) == 0:
        raise ConfigError("invalid trainer configuration:\n  data.paths: no training rows")
    return train_table, eval_table, None


def _make_optimizer(kind: str, params, lr: float):
    """The dense (MLP) parameters' optimizer."""
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise ConfigError(f"unknown optimizer {kind!r}")


def _make_sparse_optimizer(kind: str, params, lr: float, single_process: bool):
    """The embedding tables' optimizer: sgd, adagrad and rowwise_adagrad are fused in-place row
    updates (fused_sparse). In one process the lookups hand it their row gradients directly (no
    COO .grad, no host sync on CUDA); under torch.distributed the tables keep the contract the
    sparse exchange (and any sharded table) relies on: a coalesced COO .grad, then step()."""
    params = list(params)
    if kind == "sparseadam":
        return torch.optim.SparseAdam(params, lr=lr)
    if kind not in SPARSE_KINDS:
        raise ConfigError(f"unknown sparse optimizer {kind!r}")
    for p in params:
        if single_process:
            attach_row_grads(p)
        else:
            detach_row_grads(p)
    return FusedSparseOptimizer(params, kind, lr)


class _AllOptimizers:
    """The step's optimizers as one, for torch.amp.GradScaler (fp16): one unscale and one inf/NaN
    check over every gradient, the embeddings' included, so an overflow anywhere skips both
    optimizers' updates and lowers the scale at update(), as with a single optimizer. Each
    optimizer steps on gradients GradScaler has already unscaled (it sees no grad_scale here).

    The row gradients _Lookup hands to a RowGrads sink (one process) are no .grad of any
    parameter, so GradScaler would not see them: each is shown to it as the .grad of a stand-in
    tensor (one element broadcast to its shape: no memory), which GradScaler checks and unscales
    in place, the very tensor FusedSparseOptimizer then reads. COO .grads (the distributed path)
    it handles itself. The bf16/fp32 step never comes here."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers
        stand_ins = []
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    sink = row_grads_of(p)
                    for _rows, values, _unique in (sink.pending if sink is not None else ()):
                        stand_in = values.new_empty(()).expand(values.shape)
                        stand_in.grad = values
                        stand_ins.append(stand_in)
        self.param_groups = [g for o in optimizers for g in o.param_groups] + [{"params": stand_ins}]

    def step(self):
        for optimizer in self.optimizers:
            optimizer.step()


def _scaled_step(scaler: torch.amp.GradScaler, optimizers: list) -> None:
    """fp16: unscale, check and step every optimizer as one (_AllOptimizers), then update the scale.
    Like any GradScaler.step on a torch.optim optimizer, it reads the inf flag on the host once."""
    scaler.step(_AllOptimizers(optimizers))
    scaler.update()


def _set_matmul_precision(device: torch.device, precision: str) -> None:
    """fp32 means true fp32 on CUDA: TF32 off, set explicitly (the process's setting may have been
    changed by anything); tf32 lets fp32 matmuls use TF32 tensor cores (bf16/fp16 autocast keeps
    true fp32 for what it leaves in fp32). On CPU nothing is changed: torch's float32 matmul
    precision also switches oneDNN kernels there, and tf32 is meant to mean fp32 on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")


def _autocast(device: torch.device, precision: str):
    if precision in ("fp32", "tf32"):
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


def _tensorboard(cfg: TrainerConfig):
    if not cfg.reporting.tensorboardDir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("reporting.tensorboardDir is set but the tensorboard package is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(cfg.reporting.tensorboardDir)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------------
# Public entry points


def evaluate(model: DLRM, eval_table: Table, cfg: TrainerConfig, device: torch.device, denv: DistEnv) -> tuple[float, float]:
    """Exact AUC and logloss over the whole held-out set (each rank scores its part)."""
    sizes = np.asarray(cfg.model.tableSizes, dtype=np.int64)
    shards = np.array_split(np.arange(len(eval_table)), denv.world_size)
    my_rows = shards[denv.rank]
    logits = []
    was_training = model.training
    model.eval()
    # Sharded lookups are collectives: every rank runs as many forwards as the largest share needs.
    chunks = math.ceil(max(len(s) for s in shards) / 8192)
    with torch.no_grad(), _autocast(device, cfg.training.precision):
        for start in range(0, chunks * 8192, 8192):
            batch = make_batch(eval_table, my_rows[start : start + 8192], 0, sizes).to(device)
            logits.append(model(batch.dense, batch.cat).float().cpu())
    model.train(was_training)
    local = torch.cat(logits).numpy() if logits else np.empty(0, np.float32)
    if denv.distributed:
        gathered: list = [None] * denv.world_size
        dist.all_gather_object(gathered, local)
        scores = np.concatenate(gathered)
    else:
        scores = local
    labels = np.asarray(eval_table.label[np.concatenate(shards)])
    probs = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
    return roc_auc(labels, scores), log_loss(labels, probs)


def train(cfg: TrainerConfig, denv: DistEnv | None = None, *, reporter=None, progress_bar: bool = False) -> RunResult:
    """Run training to the end. Raises Preempted after checkpointing when SIGTERM arrives.

    The caller owns `reporter` (an object with update(Progress, TrainingMetrics)), used on rank 0.
    """
    denv = denv or DistEnv()
    training = cfg.training
    retain_freed_memory()  # before the data and the model: every later allocation is served that way
    device = _pick_device(cfg, denv)
    _set_matmul_precision(device, training.precision)
    if training.precision == "fp16" and device.type != "cuda":
        raise ConfigError("invalid trainer configuration:\n  training.precision: fp16 needs a CUDA device (use bf16 on CPU)")
    backend = training.backend if training.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    own_process_group = False
    if denv.distributed and not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", rank=denv.rank, world_size=denv.world_size, **kw)
        own_process_group = True
        # One line per rank, so every rank's log shows it joined (and where it runs).
        log.info("joined: rank %d of %d (local rank %d) on %s, backend %s", denv.rank, denv.world_size, denv.local_rank,
                 device, backend)
    stop = _StopFlag()
    stop.install()
    metrics = RankMetrics(denv.rank, cfg.reporting.metricsPort + denv.local_rank if cfg.reporting.metricsPort else 0)
    tensorboard = _tensorboard(cfg) if denv.rank == 0 else None
    try:
        return _train(cfg, denv, device, stop, metrics, reporter if denv.rank == 0 else None, tensorboard,
                      progress_bar and denv.rank == 0)
    finally:
        stop.uninstall()
        metrics.close()
        if tensorboard is not None:
            tensorboard.close()
        if own_process_group:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """What one run is made of; fixed once set up (the progress bar joins when the loop starts).
    The loop's changing state is a LoopState."""

    cfg: TrainerConfig
    denv: DistEnv
    device: torch.device
    model: torch.nn.Module  # what a step calls: the DLRM, wrapped in DDP when distributed
    dlrm: DLRM  # the DLRM itself (its parameters; evaluation)
    optimizers: list  # [sparse (embeddings), dense (MLPs)]
    base_lrs: list[float]  # their configured learning rates (warmup scales them)
    scaler: torch.amp.GradScaler | None  # fp16 only
    train_data: Table
    eval_data: Table | None
    oracle_auc: float | None  # the planted model's AUC on eval_data (synthetic data)
    total_steps: int
    rows_skipped: int  # malformed input rows skipped (train + eval)
    stop: _StopFlag
    metrics: RankMetrics
    reporter: object | None  # rank 0: status.progress / status.metrics of the RecTrainJob
    tensorboard: object | None  # rank 0, when configured
    bar: object | None = None  # rank 0 tqdm progress bar, when asked for
    device_data: DeviceTable | None = None  # the training columns on the GPU, when they fit (_epoch_loader)

    @property
    def global_batch(self) -> int:
        return self.cfg.training.global_batch(self.denv.world_size)

    def say(self, message: str) -> None:
        """A line for the log (through the progress bar when there is one)."""
        (self.bar.write if self.bar else log.info)(message)


def _train(cfg: TrainerConfig, denv: DistEnv, device: torch.device, stop: _StopFlag, metrics: RankMetrics,
           reporter, tensorboard, progress_bar: bool) -> RunResult:
    run = _set_up(cfg, denv, device, stop, metrics, reporter, tensorboard)
    state = _resume(run)
    if progress_bar:
        from tqdm import tqdm

        run.bar = tqdm(total=run.total_steps, initial=state.step, unit="step", desc="train", dynamic_ncols=True)
    state.window.restart()  # the first log window starts with the loop
    _report_status(run, state)
    run.model.train()
    while state.step < run.total_steps and state.epoch < cfg.training.epochs:
        if _train_epoch(run, state):
            break
        state.epoch += 1
        state.epoch_step = 0
    return _finish(run, state)


def _set_up(cfg: TrainerConfig, denv: DistEnv, device: torch.device, stop: _StopFlag, metrics: RankMetrics,
            reporter, tensorboard) -> _Run:
    """Data, model and optimizers, in the order that makes a run reproducible (seed, then init)."""
    training = cfg.training
    torch.manual_seed(training.seed)
    train_data, eval_data, oracle_auc = _load_data(cfg)
    rows_skipped = train_data.rows_skipped + (eval_data.rows_skipped if eval_data is not None else 0)
    metrics.rows_skipped.set(rows_skipped)
    if rows_skipped:
        log.warning("%d malformed rows skipped (data.malformedRows: skip)", rows_skipped)
    if denv.rank == 0:
        log.info(
            "data: %d training rows, %d evaluation rows%s",
            len(train_data), len(eval_data) if eval_data is not None else 0,
            f", planted oracle AUC {oracle_auc:.4f}" if oracle_auc is not None else "",
        )
    model, dlrm = _build_model(cfg, denv, device, stop)
    opt_cfg = training.optimizer
    optimizers = [
        _make_sparse_optimizer(opt_cfg.sparse, dlrm.sparse_parameters(), opt_cfg.sparseLearningRate or opt_cfg.learningRate,
                               single_process=not denv.distributed),
        _make_optimizer(opt_cfg.dense, dlrm.dense_parameters(), opt_cfg.learningRate),
    ]
    total_steps = steps_per_epoch(len(train_data), training.global_batch(denv.world_size)) * training.epochs
    if training.maxSteps is not None:
        total_steps = min(total_steps, training.maxSteps)
    return _Run(
        cfg, denv, device, model, dlrm, optimizers,
        base_lrs=[o.param_groups[0]["lr"] for o in optimizers],
        scaler=torch.amp.GradScaler("cuda") if training.precision == "fp16" else None,
        train_data=train_data, eval_data=eval_data, oracle_auc=oracle_auc, total_steps=total_steps,
        rows_skipped=rows_skipped, stop=stop, metrics=metrics, reporter=reporter, tensorboard=tensorboard,
    )


def _build_model(cfg: TrainerConfig, denv: DistEnv, device: torch.device, stop: _StopFlag) -> tuple[torch.nn.Module, DLRM]:
    """(the module a step calls, the DLRM): DDP averages the dense (MLP) gradients; the embedding
    tables are left out of DDP: replicated ones average their sparse gradient in sparse_exchange,
    sharded ones (model.sharding) are looked up over all_to_all (sharding.py)."""
    plan = _sharding_plan(cfg, denv, device)
    seed = cfg.training.seed
    if plan.sharded:
        # Its own process group: the lookups' all_to_alls never interleave with DDP's allreduces.
        group = dist.new_group(backend=dist.get_backend())
        embeddings = ShardedEmbeddingTables(cfg.model.tableSizes, cfg.model.embeddingDim, plan, denv.rank, seed, device, group,
                                            stop_source=lambda: stop.set)
    else:
        embeddings = EmbeddingTables(cfg.model.tableSizes, cfg.model.embeddingDim, seed=seed, device=device)
    dlrm = DLRM(cfg.model, embeddings).to(device)
    _log_embedding_memory(cfg, denv, plan, dlrm)
    if not denv.distributed:
        return dlrm, dlrm
    DDP._set_params_and_buffers_to_ignore_for_model(dlrm, [n for n, _ in dlrm.named_parameters() if n.startswith("embeddings.")])
    # The model's buffers are constants (row offsets, pair indices): no broadcast per forward.
    # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, which older torch (the GPU
    # hosts' 2.11) lacks: keep the argument both understand, without a warning in every rank's log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated", category=FutureWarning)
        ddp = DDP(dlrm, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    return ddp, dlrm


def _sharding_plan(cfg: TrainerConfig, denv: DistEnv, device: torch.device) -> ShardingPlan:
    """model.sharding for this world size (every rank computes the same plan)."""
    model = cfg.model
    if model.shardingMemoryBudgetGiB is not None:
        budget = int(model.shardingMemoryBudgetGiB * 2**30)
    else:
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        budget = default_budget(device.type, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), total)
    plan = make_plan(model.sharding, model.tableSizes, model.embeddingDim, denv.world_size, cfg.training.optimizer.sparse,
                     budget)
    if denv.rank == 0 and denv.distributed:
        log.info("sharding %s: %s over %d ranks (budget %.2f GiB per rank)", model.sharding, plan.describe(),
                 denv.world_size, budget / 2**30)
    return plan


def _log_embedding_memory(cfg: TrainerConfig, denv: DistEnv, plan: ShardingPlan, dlrm: DLRM) -> None:
    """One line per rank: the embedding rows and bytes (parameters + sparse optimizer state) it holds."""
    params = dlrm.sparse_parameters()
    rows = sum(p.shape[0] for p in params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    state_bytes = param_bytes * STATE_PER_VALUE.get(cfg.training.optimizer.sparse, 1)
    log.info("embeddings rank %d: %d rows, %d param bytes, %d optimizer state bytes (%s)", denv.rank, rows, param_bytes,
             state_bytes, plan.describe())


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resume(run: _Run) -> LoopState:
    """A fresh LoopState, or the one of the newest complete checkpoint (model, optimizers, scaler
    and RNG are restored in place)."""
    state = LoopState(window=LossWindow(run.device))
    rank = run.denv.rank
    extra = {"torch_rng": torch.get_rng_state()}
    resumed = ckpt.resume_latest(run.cfg.checkpoint.directory, run.model, run.optimizers, run.scaler, extra, rank, run.device)
    if resumed is None:
        return state
    path, meta = resumed
    torch.set_rng_state(extra["torch_rng"])
    state.step, state.epoch, state.epoch_step = meta["step"], meta["epoch"], meta["epochStep"]
    old_global = meta.get("globalBatch", run.global_batch)
    if old_global != run.global_batch:
        # Same epoch order, different global batch: continue from the same row of the epoch
        # (rounded down, so a few rows may be seen twice, none skipped).
        state.epoch_step = state.epoch_step * old_global // run.global_batch
        if rank == 0:
            log.warning("checkpoint was written with global batch %d, now %d: continuing at batch %d of epoch %d",
                        old_global, run.global_batch, state.epoch_step, state.epoch)
    state.last_checkpoint_step = state.resumed_from_step = state.step
    state.checkpoint_job_uid = readable_job_uid(meta.get("jobUid"))
    if rank == 0:
        log.info("resumed from %s (step %d, epoch %d)", path, state.step, state.epoch)
        own_uid = _job_uid()
        if state.checkpoint_job_uid and own_uid and state.checkpoint_job_uid != own_uid:
            log.warning("the checkpoint %s was written by another RecTrainJob (uid %s, this one is %s): an earlier job "
                        "of this name or one sharing checkpoint.directory; resuming from it", path,
                        state.checkpoint_job_uid, own_uid)
    return state


def _job_uid() -> str | None:
    """The RecTrainJob's metadata.uid (the operator sets it in every rank pod); None outside one."""
    return os.environ.get(JOB_UID_ENV) or None


def _train_epoch(run: _Run, state: LoopState) -> bool:
    """The rest of epoch `state.epoch`, from batch `state.epoch_step` on. Returns True when the run
    has done its last step; raises Preempted when a rank got SIGTERM."""
    cfg = run.cfg
    training = cfg.training
    loader = _epoch_loader(run, state)
    state.data_wait_counted = 0.0
    for batch in loader:
        any_rank_stopping = _train_step(run, state, batch)
        at_end = state.step >= run.total_steps
        if state.step % cfg.reporting.logEverySteps == 0 or at_end or any_rank_stopping:
            _close_log_window(run, state, loader.wait_seconds)
        if any_rank_stopping:
            _stop_preempted(run, state)
        if at_end:
            return True
        if cfg.checkpoint.directory and state.step % cfg.checkpoint.everySteps == 0:
            _save_checkpoint(run, state)
            _report_status(run, state)
        if training.evalEverySteps and state.step % training.evalEverySteps == 0:
            _evaluate(run, state)
    _count_data_wait(run, state, loader.wait_seconds)
    return False


# Device-resident data may take this share of the device memory free once the model and its
# optimizer state are allocated (the rest is the step's activations and the allocator's slack).
DEVICE_DATA_BUDGET = 0.5
DEVICE_DATA_ENV = "RECTRAIN_DEVICE_DATA"  # auto (default): on CUDA when it fits; on: also on CPU; off: never


def _epoch_loader(run: _Run, state: LoopState):
    """This rank's batches of the epoch, from batch `state.epoch_step` on: gathered on the device
    from device-resident columns when they fit (run.device_data), else prepared on the host by
    BatchLoader. Both take the rows of data.shard_indices, so every step sees the same rows."""
    cfg, training, denv = run.cfg, run.cfg.training, run.denv
    if run.device_data is None:
        run.device_data = _device_data(run)
    if run.device_data is not None:
        return DeviceBatchLoader(run.device_data, len(run.train_data), run.global_batch, denv.world_size, denv.rank,
                                 training.seed, state.epoch, skip=state.epoch_step)
    return BatchLoader(run.train_data, run.global_batch, denv.world_size, denv.rank, training.seed, state.epoch,
                       cfg.model.tableSizes, skip=state.epoch_step, workers=training.dataLoaderWorkers,
                       device=run.device)


def _device_data(run: _Run) -> DeviceTable | None:
    """The training columns on the device when RECTRAIN_DEVICE_DATA allows it and they fit in
    DEVICE_DATA_BUDGET of the free device memory; None keeps the host pipeline."""
    mode = os.environ.get(DEVICE_DATA_ENV, "auto")
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"invalid trainer configuration:\n  {DEVICE_DATA_ENV}: must be auto, on or off, got {mode!r}")
    device, sizes = run.device, run.cfg.model.tableSizes
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    need = DeviceTable.nbytes(run.train_data, sizes)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if need > DEVICE_DATA_BUDGET * free:
            log.info("training data (%.2f GiB) exceeds %.0f%% of free device memory (%.2f GiB): batches are prepared on the host",
                     need / 2**30, 100 * DEVICE_DATA_BUDGET, free / 2**30)
            return None
    started = time.perf_counter()
    table = DeviceTable(run.train_data, sizes, device)
    log.info("training data on %s: %.2f GiB in %.1f s; batches are gathered there", device, need / 2**30,
             time.perf_counter() - started)
    return table


def _train_step(run: _Run, state: LoopState, batch: Batch) -> bool:
    """One optimizer step on this rank's part of a global batch. Returns whether any rank got
    SIGTERM (every rank learns it here, so all stop after the same step and checkpoint together).

    The hot path: no host-device sync, no .item(), nothing allocated beyond what the step needs.
    """
    started = time.perf_counter()
    training = run.cfg.training
    device, denv, optimizers, scaler = run.device, run.denv, run.optimizers, run.scaler
    batch = batch.to(device, non_blocking=device.type == "cuda")
    warmup = training.optimizer.warmupSteps
    if warmup:  # linear from lr/warmup to lr over warmupSteps
        factor = min(1.0, (state.step + 1) / warmup)
        for optimizer, lr in zip(optimizers, run.base_lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
    with _autocast(device, training.precision):
        logits = run.model(batch.dense, batch.cat)
    loss_sum = F.binary_cross_entropy_with_logits(logits.float(), batch.label, reduction="sum")
    # DDP averages gradients over ranks; scaling by world/global makes the result the gradient of
    # the mean loss over the global batch, whatever each rank's share.
    loss = loss_sum * (denv.world_size / batch.global_size)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    any_rank_stopping = finish_sparse_grads(run.dlrm, denv, run.stop.set)
    if scaler is not None:
        _scaled_step(scaler, optimizers)
    else:
        for optimizer in optimizers:
            optimizer.step()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.epoch_step += 1
    state.window.add(loss_sum, batch.global_size)
    run.metrics.samples.inc(batch.label.shape[0])
    run.metrics.step.set(state.step)
    if run.bar:
        run.bar.update(1)
    state.time_step(time.perf_counter() - started)
    return any_rank_stopping


def _close_log_window(run: _Run, state: LoopState, data_wait_seconds: float) -> None:
    """A log point: the window's global loss and throughput go to the history, the metrics, the
    log (rank 0), TensorBoard and the job's status."""
    loss, samples_per_second = state.window.close(run.denv.distributed)
    if loss is not None:
        state.loss = loss
    state.samples_per_second = samples_per_second
    state.history.append((state.step, state.loss))
    metrics = run.metrics
    metrics.loss.set(state.loss if state.loss is not None else float("nan"))
    if samples_per_second is not None:
        metrics.sps.set(samples_per_second / run.denv.world_size)
    _count_data_wait(run, state, data_wait_seconds)
    if run.device.type == "cuda":
        metrics.gpu_mem.set(torch.cuda.memory_allocated(run.device))
    if run.denv.rank == 0:
        if run.bar:
            run.bar.set_postfix(loss=f"{state.loss:.4f}", sps=f"{samples_per_second:,.0f}" if samples_per_second else "-",
                                refresh=False)
        else:
            log.info("step=%d/%d epoch=%d loss=%.5f samples_per_s=%.0f", state.step, run.total_steps, state.epoch,
                     state.loss or float("nan"), samples_per_second or 0.0)
        if run.tensorboard is not None:
            run.tensorboard.add_scalar("train/loss", state.loss, state.step)
            if samples_per_second:
                run.tensorboard.add_scalar("train/samples_per_second", samples_per_second, state.step)
    _report_status(run, state)


def _count_data_wait(run: _Run, state: LoopState, data_wait_seconds: float) -> None:
    """Add what the current epoch's loader waited since the last count to the metrics."""
    run.metrics.data_wait.inc(max(0.0, data_wait_seconds - state.data_wait_counted))
    state.data_wait_counted = data_wait_seconds


def _save_checkpoint(run: _Run, state: LoopState) -> str | None:
    """A checkpoint of this step (once per step), or None when checkpoints are off."""
    directory = run.cfg.checkpoint.directory
    if not directory:
        return None
    if state.last_checkpoint_step == state.step:
        return str(ckpt.step_dir(directory, state.step))
    meta = {"epoch": state.epoch, "epochStep": state.epoch_step, "totalSteps": run.total_steps,
            "worldSize": run.denv.world_size, "globalBatch": run.global_batch, "time": _now()}
    if uid := _job_uid():
        meta["jobUid"] = uid
    path = ckpt.save(directory, state.step, run.model, run.optimizers, run.scaler, meta, run.denv.rank,
                     run.cfg.checkpoint.keep, extra={"torch_rng": torch.get_rng_state()})
    state.last_checkpoint_step = state.step
    return str(path)


def _evaluate(run: _Run, state: LoopState) -> None:
    """AUC and logloss on the held-out data (when there is any), logged and reported."""
    if run.eval_data is None or len(run.eval_data) == 0:
        return
    state.auc, state.logloss = evaluate(run.dlrm, run.eval_data, run.cfg, run.device, run.denv)
    state.eval_step = state.step
    run.metrics.auc.set(state.auc)
    if run.denv.rank == 0:
        run.say(f"eval step={state.step} auc={state.auc:.4f} logloss={state.logloss:.4f}" + _oracle_text(run))
        if run.tensorboard is not None:
            run.tensorboard.add_scalar("eval/auc", state.auc, state.step)
            run.tensorboard.add_scalar("eval/logloss", state.logloss, state.step)
    _report_status(run, state)


def _report_status(run: _Run, state: LoopState) -> None:
    """Hand the job's progress and metrics to the reporter (rank 0; it throttles the patches)."""
    if run.reporter is None:
        return
    total, step = run.total_steps, state.step
    eta = max(0.0, (total - step) * state.step_seconds) if state.step_seconds is not None and total else None
    # Rounded: these are read by people (kubectl get rtj columns), not fed back into training.
    progress = Progress(
        epoch=min(state.epoch, max(run.cfg.training.epochs - 1, 0)), step=step, totalSteps=total,
        percent=round(100.0 * step / total, 2) if total else None,
        loss=_rounded(state.loss, 5), samplesPerSecond=_rounded(state.samples_per_second, 1), etaSeconds=_rounded(eta, 1),
        lastCheckpointStep=state.last_checkpoint_step, resumedFromStep=state.resumed_from_step,
        checkpointJobUid=state.checkpoint_job_uid, updatedTime=_now(),
    )
    auc = state.auc if state.auc is not None and not math.isnan(state.auc) else None
    metrics = TrainingMetrics(auc=_rounded(auc, 5), logloss=_rounded(state.logloss, 5), evalStep=state.eval_step,
                              rowsSkipped=run.rows_skipped)
    run.reporter.update(progress, metrics)


def _stop_preempted(run: _Run, state: LoopState):
    """SIGTERM reached a rank: checkpoint this step, report, and raise Preempted."""
    path = _save_checkpoint(run, state)
    _report_status(run, state)
    if run.bar:
        run.bar.close()
    raise Preempted(state.step, path)


def _finish(run: _Run, state: LoopState) -> RunResult:
    """The last evaluation, checkpoint and status, and the run's result."""
    _evaluate(run, state)
    final_checkpoint = _save_checkpoint(run, state)
    _report_status(run, state)
    if run.bar:
        run.bar.close()
    log.info("rank %d peak RSS %d bytes", run.denv.rank, peak_rss_bytes())
    if run.denv.rank == 0 and state.auc is not None:
        loss = state.loss if state.loss is not None else float("nan")
        print(f"final: step={state.step} loss={loss:.5f} auc={state.auc:.4f} logloss={state.logloss:.4f}" + _oracle_text(run),
              flush=True)
    return RunResult(state.step, state.epoch, run.total_steps, state.loss, state.auc, state.logloss, run.rows_skipped,
                     final_checkpoint, state.samples_per_second, state.history)


def _oracle_text(run: _Run) -> str:
    return f" oracle_auc={run.oracle_auc:.4f}" if run.oracle_auc is not None else ""
