"""Checkpoints with torch.distributed.checkpoint (DCP).

Layout under the configured directory:
    step-00000120/          a complete checkpoint (DCP files + .metadata + trainer.json)
    .tmp-step-00000130/     being written; never read
Under DDP every rank holds the same model and optimizer state, so rank 0 alone writes a complete
checkpoint (DCP, no cross-rank sharding): it works whether the directory is one shared volume or a
volume per pod. Rank 0 writes into a temporary directory, then `trainer.json` (the completion
marker), then renames the directory into place: a directory named `step-*` holding
`trainer.json` is always complete. The newest `keep` are kept.

On resume rank 0 picks the newest complete checkpoint; ranks that can read it (a shared volume)
load it themselves, otherwise rank 0 sends them the state over the process group.
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
    load a checkpoint into them in place (SparseAdam gets empty sparse gradients)."""
    for opt in optimizers:
        if opt.state:
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


def _state(model, optimizers, scaler, extra: dict | None) -> dict:
    st = {
        "model": _unwrap(model).state_dict(),
        "optim": {str(i): _optim_flat(o) for i, o in enumerate(optimizers)},
        "extra": dict(extra or {}),
    }
    if scaler is not None:
        st["scaler"] = scaler.state_dict()
    return st


def save(root: str | Path, step: int, model, optimizers: list, scaler, meta: dict, rank: int, keep: int,
         extra: dict | None = None) -> Path:
    """Collective (every rank calls it; rank 0 writes). `extra`: more tensors such as RNG state.
    Returns the final directory."""
    root = Path(root)
    final = step_dir(root, step)
    if rank == 0:
        tmp = root / f".tmp-{final.name}"
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE)
            dcp.save(_state(model, optimizers, scaler, extra), checkpoint_id=str(tmp), no_dist=True)
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
    """Load a complete checkpoint (this process only) into model/optimizers/scaler and the `extra`
    tensors (in place); returns its meta."""
    path = Path(path)
    meta = json.loads((path / MARKER).read_text())
    _init_optimizer_state(optimizers)
    st = _state(model, optimizers, scaler, extra)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE)
        dcp.load(st, checkpoint_id=str(path), no_dist=True)
    _apply(st, model, optimizers, scaler, extra)
    return meta


def _apply(st: dict, model, optimizers, scaler, extra):
    _unwrap(model).load_state_dict(st["model"])
    for i, o in enumerate(optimizers):
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
        _apply(st, model, optimizers, scaler, extra)
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
