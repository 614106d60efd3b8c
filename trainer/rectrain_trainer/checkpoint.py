"""Checkpoints with torch.distributed.checkpoint (DCP).

Layout under the configured directory:
    step-00000120/          a complete checkpoint (DCP files + .metadata + trainer.json)
    .tmp-step-00000130/     being written; never read
Rank 0 writes into a temporary directory, then `trainer.json` (the completion marker), then renames
the directory into place: a directory named `step-*` holding `trainer.json` is always complete. The
newest `keep` are kept.

Embedding tables are saved one logical tensor per table, `model.embeddings.tables.<f>` (and their
sparse optimizer state `optim.<i>.t.<f>.<name>`), in global row order whatever the sharding: a
row-wise table as a DTensor (each rank writes its row block), a table-wise one by its owner. DCP
reads any of them back into any other layout (resharding), so a job resumes at another world
size, replicated -> sharded included.

With every table replicated every rank holds the same state, so rank 0 alone writes (no
cross-rank sharding): it works whether the directory is one shared volume or a volume per pod.
With sharded tables every rank writes its shards (a volume every rank reads is needed).

On resume rank 0 picks the newest complete checkpoint; ranks that can read it (a shared volume)
load it themselves, otherwise (replicated tables only) rank 0 sends them the state over the
process group.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .fused_sparse import FusedSparseOptimizer

log = logging.getLogger("rectrain.checkpoint")

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
MARKER = "trainer.json"


# DCP assumes a single process when torch.distributed is not initialized: intended here.
_SINGLE = "torch.distributed is disabled, unavailable or uninitialized"


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier():
    if _dist():
        dist.barrier()


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    p = Path(root)
    if not p.is_dir():
        return []
    out = []
    for child in p.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / MARKER).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(root: str | Path | None) -> Path | None:
    if not root:
        return None
    c = complete_checkpoints(root)
    return c[-1][1] if c else None


def _init_optimizer_state(optimizers: list) -> None:
    """Give empty optimizers their state tensors (a step with lr 0 and zero gradients) so DCP can
    load a checkpoint into them in place (SparseAdam gets empty sparse gradients). A
    FusedSparseOptimizer has its state from the start (sgd has none): a dense zero gradient the
    size of the table would only cost memory and a whole-table update."""
    for opt in optimizers:
        if opt.state or isinstance(opt, FusedSparseOptimizer):
            continue
        lrs = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = 0.0
            for p in g["params"]:
                if isinstance(opt, torch.optim.SparseAdam):
                    idx = torch.empty((1, 0), dtype=torch.long, device=p.device)
                    p.grad = torch.sparse_coo_tensor(idx, torch.empty((0, *p.shape[1:]), dtype=p.dtype, device=p.device), p.shape)
                else:
                    p.grad = torch.zeros_like(p)
        opt.step()
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)


def _unwrap(model):
    return getattr(model, "module", model)  # DDP -> the model itself (same parameter names)


def _optim_flat(opt) -> dict:
    """An optimizer's state dict as {"t": {"<param>.<name>": tensor}, "rest": pickled bytes of
    everything else}: flat keys DCP can load into in place, for every optimizer's state layout."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    return {"t": tensors, "rest": pickle.dumps({"scalars": scalars, "param_groups": sd["param_groups"]})}


def _optim_unflat(flat: dict) -> dict:
    rest = pickle.loads(flat["rest"])
    state: dict = {}
    for src in (flat["t"], rest["scalars"]):
        for key, v in src.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def _embeddings(model):
    return _unwrap(model).embeddings


def _is_sharded(model) -> bool:
    plan = getattr(_embeddings(model), "plan", None)
    return plan is not None and plan.sharded


_meshes: dict = {}


def _mesh(device_type: str):
    """The 1-D device mesh over all ranks (the default process group) that row-wise DTensors use."""
    from torch.distributed.device_mesh import init_device_mesh

    key = (device_type, dist.get_world_size())
    if key not in _meshes:
        _meshes[key] = init_device_mesh(device_type, (dist.get_world_size(),))
    return _meshes[key]


def _table_tensor(local: torch.Tensor, row_wise: bool, table_rows: int) -> torch.Tensor:
    """This rank's part of a table-shaped tensor as DCP sees it: the tensor itself, or for a
    row-wise table a DTensor (Shard(0), the plan's row blocks) of the whole table."""
    if not row_wise:
        return local
    from torch.distributed.tensor import DTensor, Shard

    shape = torch.Size([table_rows, *local.shape[1:]])
    return DTensor.from_local(local, _mesh(local.device.type), [Shard(0)], run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def _table_slots(model):
    """(feature, parameter, local start, rows, row-wise?, table rows) of each table block this rank holds."""
    emb = _embeddings(model)
    plan = getattr(emb, "plan", None)
    sizes = _unwrap(model).cfg.tableSizes
    return [(f, p, local, rows, plan is not None and plan.kinds[f] == "row", sizes[f])
            for f, p, local, _start, rows in emb.table_slots()]


def _model_state(model) -> dict:
    """The dense parameters (and any other state) by name, plus one entry per embedding table."""
    st = {k: v for k, v in _unwrap(model).state_dict().items() if not k.startswith("embeddings.")}
    for f, p, local, rows, row_wise, table_rows in _table_slots(model):
        st[f"embeddings.tables.{f}"] = _table_tensor(p.data[local : local + rows], row_wise, table_rows)
    return st


def _sparse_optim_flat(opt, model) -> dict:
    """The sparse optimizer's state like _optim_flat, but per table: "<f>.<name>" for each state
    tensor with a row per table row (sliced like the table), everything else (step counts, the
    same on every parameter) and the hyperparameters pickled in "rest"."""
    tensors = {}
    for f, p, local, rows, row_wise, table_rows in _table_slots(model):
        for name, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == p.shape[0]:
                tensors[f"{f}.{name}"] = _table_tensor(v[local : local + rows], row_wise, table_rows)
    scalars = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for name, v in opt.state.get(p, {}).items():
                if not (isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == p.shape[0]):
                    scalars.setdefault(name, v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {"t": tensors, "rest": pickle.dumps({"scalars": scalars, "param_groups": groups})}


def _apply_sparse_rest(opt, rest: bytes) -> None:
    """The step counts and hyperparameters of a sparse optimizer (its tensors are loaded in place)."""
    rest = pickle.loads(rest)
    for group, saved in zip(opt.param_groups, rest["param_groups"]):
        group.update(saved)
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.setdefault(p, {})
            for name, v in rest["scalars"].items():
                if isinstance(v, torch.Tensor) and isinstance(state.get(name), torch.Tensor):
                    state[name].copy_(v)
                else:
                    state[name] = v


def _sparse_optimizer_index(model, optimizers: list) -> int | None:
    sparse = {id(p) for p in _unwrap(model).sparse_parameters()}
    for i, o in enumerate(optimizers):
        if any(id(p) in sparse for g in o.param_groups for p in g["params"]):
            return i
    return None


def _state(model, optimizers, scaler, extra: dict | None) -> dict:
    sparse = _sparse_optimizer_index(model, optimizers)
    st = {
        "model": _model_state(model),
        "optim": {str(i): _sparse_optim_flat(o, model) if i == sparse else _optim_flat(o) for i, o in enumerate(optimizers)},
        "extra": dict(extra or {}),
    }
    if scaler is not None:
        st["scaler"] = scaler.state_dict()
    return st


def save(root: str | Path, step: int, model, optimizers: list, scaler, meta: dict, rank: int, keep: int,
         extra: dict | None = None) -> Path:
    """Collective (every rank calls it; rank 0 writes, every rank its shards when tables are
    sharded). `extra`: more tensors such as RNG state. Returns the final directory."""
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    sharded = _is_sharded(model)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if sharded:
        _barrier()  # the directory exists before any rank writes into it
        dcp.save(_state(model, optimizers, scaler, extra), checkpoint_id=str(tmp))
    elif rank == 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE)
            dcp.save(_state(model, optimizers, scaler, extra), checkpoint_id=str(tmp), no_dist=True)
    if rank == 0:
        (tmp / MARKER).write_text(json.dumps({"step": step, **meta}, indent=1))
        if final.exists():  # same step saved twice (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _s, old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _fsync_dir(p: Path):
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path: str | Path, model, optimizers: list, scaler, extra: dict | None = None) -> dict:
    """Load a complete checkpoint into model/optimizers/scaler and the `extra` tensors (in place);
    returns its meta. Collective when the tables are sharded (each rank reads its shards), else
    this process only."""
    path = Path(path)
    meta = json.loads((path / MARKER).read_text())
    _init_optimizer_state(optimizers)
    st = _state(model, optimizers, scaler, extra)
    if _is_sharded(model):
        dcp.load(st, checkpoint_id=str(path))
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE)
            dcp.load(st, checkpoint_id=str(path), no_dist=True)
    _apply(st, st, model, optimizers, scaler, extra)
    return meta


def _copy_into(target: dict, loaded: dict) -> None:
    """Copy loaded tensors into the target state's tensors (views of the model's and optimizers'
    own), unless DCP already loaded them in place."""
    for key, value in loaded.items():
        if isinstance(value, dict):
            _copy_into(target[key], value)
        elif isinstance(value, torch.Tensor) and target[key] is not value:
            with torch.no_grad():
                target[key].copy_(value)


def _apply(st: dict, target: dict, model, optimizers, scaler, extra):
    """Apply a loaded state `st` to the model, optimizers, scaler and extra; `target` is their
    _state (the same object when DCP loaded in place)."""
    _copy_into(target["model"], st["model"])
    sparse = _sparse_optimizer_index(model, optimizers)
    for i, o in enumerate(optimizers):
        if i == sparse:
            _copy_into(target["optim"][str(i)]["t"], st["optim"][str(i)]["t"])
            _apply_sparse_rest(o, st["optim"][str(i)]["rest"])
        else:
            o.load_state_dict(_optim_unflat(st["optim"][str(i)]))
    if scaler is not None and "scaler" in st:
        scaler.load_state_dict(st["scaler"])
    if extra is not None:
        extra.update(st["extra"])


def resume_latest(root: str | Path | None, model, optimizers: list, scaler, extra: dict | None, rank: int,
                  device: torch.device) -> tuple[Path, dict] | None:
    """Collective: restore the newest complete checkpoint rank 0 sees, on every rank.
    Returns (path, meta) or None when there is none."""
    chosen = [str(latest_checkpoint(root)) if rank == 0 and latest_checkpoint(root) else None]
    if _dist():
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return None
    path = Path(chosen[0])
    readable = (path / MARKER).is_file()
    all_readable = readable
    if _dist():
        flag = torch.tensor([1 if readable else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        all_readable = bool(flag.item())
    if all_readable:
        return path, load(path, model, optimizers, scaler, extra)
    if _is_sharded(model):
        raise RuntimeError(f"checkpoint {path}: not every rank can read it, and sharded embedding tables "
                           "(spec.trainer.model.sharding) load their shards on every rank: "
                           "put spec.trainer.checkpoint.directory on a volume all pods share")
    # Some rank cannot see rank 0's volume: rank 0 loads and sends the state.
    from torch.utils._pytree import tree_map

    if rank == 0:
        meta = load(path, model, optimizers, scaler, extra)
        st = _state(model, optimizers, scaler, extra)
        payload = [tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, st), meta]
    else:
        payload = [None, None]
    dist.broadcast_object_list(payload, src=0)
    if rank != 0:
        _init_optimizer_state(optimizers)
        st = tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, payload[0])
        _apply(st, _state(model, optimizers, scaler, extra), model, optimizers, scaler, extra)
    return path, payload[1]


def load_model_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The model parameters of a checkpoint as plain tensors (single process; for tools/tests)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path)).read_metadata()
    st = {}
    for key, m in md.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(m, TensorStorageMetadata):
            st[key] = torch.empty(m.size, dtype=m.properties.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE)
        dcp.load(st, checkpoint_id=str(path), no_dist=True)
    return {k[len("model."):]: v for k, v in st.items()}
