#!/usr/bin/env python3
"""Trainer vs TorchRec benchmark (not a test): samples/s of our trainer against TorchRec's DLRM
under DistributedModelParallel on the same config and the same rows, on CPU, 1 and 2 ranks, fp32
and bf16, in one run.

    .venv/bin/python bench/torchrec_bench.py                          # every case, 3 repeats
    .venv/bin/python bench/torchrec_bench.py --ranks 2 --precisions bf16 --repeats 5 --json out.json

Config (Criteo shape): 26 tables x 100k rows, dim 16, 13 dense features, bottom MLP [64, 16],
top MLP [64, 32, 1], dot interaction, Adagrad lr 0.01 (element-wise, embeddings and MLPs), batch
2048 per rank. Ranks are separate processes over gloo (MASTER_ADDR/RANK/WORLD_SIZE),
OMP_NUM_THREADS = CPUs / ranks.

Ids (--ids; both sides get byte-identical id streams, checked by a digest of every rank-0 batch):
- zipf (the headline): each feature's ids Zipf-distributed (exponent --zipf-alpha, default 1.05)
  over all 100k rows of its table, hot ids scattered by a fixed random permutation: high
  cardinality, as in Criteo; a batch touches many distinct rows.
- narrow: what our trainer's synthetic data draws (at most 1000 distinct values per feature,
  popularity u**2): few distinct rows per batch, small working set. It favours implementations
  that gain from repeated rows (ours deduplicates rows in the backward pass).
Both are written once per run as a dataset in rectrain's binary format (label.u8, dense.f32,
cat.u32, meta.json: what `rectrain-preprocess` writes). Our trainer reads it with
`data.source: binary` (its own memory-mapped reader and input pipeline, 1 prefetch thread). The
TorchRec worker memory-maps the same files and takes, for every step and rank, exactly the rows our
trainer takes (the trainer's epoch permutation and rank split, re-implemented in 4 lines of
numpy), builds all its batches (KeyedJaggedTensors) before the clock starts and has no input
pipeline: that part favours TorchRec.

Timing, identical for both sides: --warmup steps are run and not timed, then --steps steps are
timed; a run's figure is global samples of the timed steps / their wall time (TorchRec: clock
between two barriers; ours: the sum of its logged --log-every windows after the warm-up, i.e. the
same steps timed end to end); each case's figure is the median over --repeats runs, ours and
TorchRec interleaved (order alternating per repeat) so load spikes on a shared machine hit both.

TorchRec setting (--sharding): the fastest this machine gave (see bench/README.md): fused kernels
(FBGEMM CPU table-batched embeddings) with Adagrad applied in the backward pass
(`apply_optimizer_in_backward`, EXACT_ADAGRAD), dense part under DMP's DDP with Adagrad, bf16 via
torch.autocast; `auto` lets TorchRec's planner choose. Its processes get what our trainer sets for
itself: transparent huge pages (THP_MEM_ALLOC_ENABLE=1) and glibc malloc keeping freed memory
(TORCHREC_MALLOC_ENV).

TorchRec is not a project dependency: on first use this script makes a separate venv at
.bench-venv/torchrec (git-ignored) with `torch==2.13.0 fbgemm-gpu-cpu==1.8.0 numpy`,
`torchrec==1.8.0 --no-deps` and `tensordict torchmetrics==1.0.3 tqdm pyre-extensions`. When that
fails, the TorchRec column is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_bench  # noqa: E402 - its process runner and our trainer's measurement

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venv" / "torchrec"
VPY = VENV / "bin" / "python"
INSTALL = [
    ["torch==2.13.0", "fbgemm-gpu-cpu==1.8.0", "numpy"],
    ["--no-deps", "torchrec==1.8.0"],
    ["tensordict", "torchmetrics==1.0.3", "tqdm", "pyre-extensions"],
]
SEED = 0  # our trainer's training.seed (trainer_bench.config): it orders the rows of an epoch
DEFAULT_SHARDING = "table_wise"
# glibc's environment form of rectrain_trainer.host_allocator.SETTINGS (freed memory stays in the
# process: no page faults on every step's fresh tensors), so TorchRec gets what our trainer sets.
TORCHREC_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": "-1", "MALLOC_TOP_PAD_": str(64 << 20)}  # what the planner picks here; see bench/README.md for the others

# The TorchRec side, run by the venv's python in each rank process.
WORKER = r"""
import hashlib, json, os, sys, time
import numpy as np
import torch
import torch.distributed as dist
cfg = json.loads(sys.argv[1])
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
dist.init_process_group("gloo", rank=rank, world_size=world)
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

torch.manual_seed(rank)
dev = torch.device("cpu")
T, D, R, B = 26, cfg["dim"], cfg["rows"], cfg["batch"]
names = [f"f{i}" for i in range(T)]
tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=R, feature_names=[names[i]]) for i in range(T)]
model = DLRMTrain(DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
                       dense_in_features=13, dense_arch_layer_sizes=[64, D], over_arch_layer_sizes=[64, 32, 1], dense_device=dev))
apply_optimizer_in_backward(torch.optim.Adagrad, model.model.sparse_arch.parameters(), {"lr": cfg["lr"]})
topo = Topology(world_size=world, compute_device="cpu")
constraints = None
if cfg["sharding"] != "auto":
    constraints = {f"t{i}": ParameterConstraints(sharding_types=[cfg["sharding"]]) for i in range(T)}
plan = EmbeddingShardingPlanner(topology=topo, constraints=constraints).collective_plan(model, pg=dist.GroupMember.WORLD)
dmp = DistributedModelParallel(module=model, device=dev, plan=plan)
dense_opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adagrad(ps, lr=cfg["lr"]))
opt = CombinedOptimizer([dmp.fused_optimizer, dense_opt])
if rank == 0:
    kinds = sorted({f"{s.sharding_type}/{s.compute_kernel}" for m in plan.plan.values() for s in m.values()})
    print("plan:", ",".join(kinds), file=sys.stderr, flush=True)

# Exactly the rows our trainer's rank takes at each step (rectrain_trainer.data.shard_indices /
# make_batch: the epoch permutation, rank r's part of each global batch, sorted, ids % table rows).
n = cfg["data_rows"]
lab = np.memmap(os.path.join(cfg["data"], "label.u8"), np.uint8, "r", shape=(n,))
den = np.memmap(os.path.join(cfg["data"], "dense.f32"), "<f4", "r", shape=(n, 13))
cat = np.memmap(os.path.join(cfg["data"], "cat.u32"), "<u4", "r", shape=(n, T))
order = np.random.default_rng([cfg["seed"], 0, 99]).permutation(n)
g = B * world
digest = hashlib.sha256()
batches = []
for s in range(cfg["warmup"] + cfg["steps"]):
    idx = np.sort(np.array_split(order[s * g:(s + 1) * g], world)[rank])
    ids = cat[idx].astype(np.int64) % R  # [B, T]
    digest.update(ids.tobytes())
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=names, values=torch.from_numpy(np.ascontiguousarray(ids.T).reshape(-1)),
                                              lengths=torch.ones(T * len(idx), dtype=torch.int32))
    batches.append(Batch(dense_features=torch.from_numpy(np.ascontiguousarray(den[idx])), sparse_features=kjt,
                         labels=torch.from_numpy(lab[idx].astype(np.float32))))
bf16 = cfg["precision"] == "bf16"

def step(i):
    b = batches[i]
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = dmp(b)
    loss.backward()
    opt.step()
    return loss

for i in range(cfg["warmup"]):
    step(i)
dist.barrier()
t0 = time.perf_counter()
for i in range(cfg["warmup"], cfg["warmup"] + cfg["steps"]):
    loss = step(i)
dist.barrier()
dt = time.perf_counter() - t0
if rank == 0:
    print(json.dumps({"samples_per_s": B * world * cfg["steps"] / dt, "loss": float(loss), "digest": digest.hexdigest()}), flush=True)
dist.destroy_process_group()
"""

SHARDINGS = ["auto", "table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_torchrec() -> str | None:
    """None when TorchRec imports in the bench venv; else the reason it is skipped."""
    probe = [str(VPY), "-c", "import torchrec, fbgemm_gpu, torch, numpy; print(torch.__version__, torchrec.__version__)"]
    if VPY.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    print(f"# installing TorchRec into {VENV.relative_to(ROOT)} (benchmark only; a few minutes the first time)", flush=True)
    steps = [[sys.executable, "-m", "venv", str(VENV)]] + [[str(VPY), "-m", "pip", "install", "-q", *pkgs] for pkgs in INSTALL]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
            return f"`{' '.join(cmd[-3:])}` failed: {tail[0][:200]}"
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode != 0:
        return f"torchrec does not import: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    return None


# ------------------------------------------------------------------------------------------- data


def draw_ids(kind: str, rows: int, table_rows: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """[rows, 26] uint32 category values (the trainer takes value % table_rows)."""
    cats = np.empty((rows, 26), np.uint32)
    if kind == "narrow":
        # As rectrain_trainer.data.synthetic_table: min(rows, 1000) distinct values, popularity u**2.
        c = max(2, min(table_rows, 1000))
        for f in range(26):
            cats[:, f] = np.minimum((c * rng.random(rows) ** 2.0).astype(np.int64), c - 1)
        return cats
    # zipf: P(rank k) ~ k**-alpha over all table_rows ids; rank k -> a fixed random id per feature.
    cdf = np.cumsum(np.arange(1, table_rows + 1, dtype=np.float64) ** -alpha)
    cdf /= cdf[-1]
    for f in range(26):
        ranks = np.minimum(np.searchsorted(cdf, rng.random(rows), side="right"), table_rows - 1)
        cats[:, f] = rng.permutation(table_rows)[ranks]
    return cats


def write_dataset(out: Path, kind: str, rows: int, table_rows: int, alpha: float, seed: int) -> dict:
    """A dataset in rectrain's binary format (as `rectrain-preprocess` writes it) with `kind` ids."""
    rng = np.random.default_rng([seed, 1 if kind == "zipf" else 2])
    out.mkdir(parents=True)
    raw = rng.geometric(0.15, size=(rows, 13)) - 1  # Criteo-like dense counts, log(1+x) as preprocess stores them
    raw[rng.random((rows, 13)) < 0.2] = 0
    cats = draw_ids(kind, rows, table_rows, alpha, rng)
    (out / "label.u8").write_bytes((rng.random(rows) < 0.25).astype(np.uint8).tobytes())
    (out / "dense.f32").write_bytes(np.log1p(raw).astype("<f4").tobytes())
    (out / "cat.u32").write_bytes(cats.astype("<u4").tobytes())
    meta = {"format": "rectrain-columnar-v1", "rows": rows, "numDense": 13, "numCat": 26, "rowsSkipped": 0,
            "sources": [f"generated by bench/torchrec_bench.py: {kind} ids"]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def expected_stream(path: Path, args, ranks: int, steps: int) -> tuple[str, float]:
    """(sha256 of rank 0's ids over `steps` steps, mean distinct rows per table per rank-0 batch), computed
    with the trainer's own reader and batching code."""
    import hashlib

    from rectrain_trainer.data import make_batch, open_binary, shard_indices

    t = open_binary(str(path))
    sizes = np.asarray([args.table_rows] * 26, np.int64)
    h = hashlib.sha256()
    distinct = []
    for i, (idx, gsize) in enumerate(shard_indices(len(t), args.batch * ranks, ranks, 0, SEED, 0)):
        if i >= steps:
            break
        cat = make_batch(t, idx, gsize, sizes).cat.numpy()
        h.update(cat.tobytes())
        distinct.append(np.mean([len(np.unique(cat[:, f])) for f in range(26)]))
    return h.hexdigest(), float(np.mean(distinct))


# ------------------------------------------------------------------------------------------- runs


def run_torchrec(args, precision: str, ranks: int, data: Path, data_rows: int) -> tuple[float | None, str, str | None]:
    cfg = json.dumps({"dim": 16, "rows": args.table_rows, "batch": args.batch, "lr": 0.01, "precision": precision,
                      "steps": args.steps, "warmup": args.warmup, "sharding": args.sharding, "data": str(data),
                      "data_rows": data_rows, "seed": SEED})
    threads = max(1, (os.cpu_count() or 1) // ranks)
    port = trainer_bench.free_port()
    envs = []
    for r in range(ranks):
        # THP_MEM_ALLOC_ENABLE=1: PyTorch's switch for transparent huge pages on every large CPU
        # allocation, so TorchRec's tables get the huge pages our trainer asks for its own
        # (rectrain_trainer.hugepages); without it TorchRec's lookups pay a TLB miss per row.
        # TORCHREC_MALLOC_ENV: the malloc settings our trainer sets from inside (host_allocator).
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), THP_MEM_ALLOC_ENABLE="1", **TORCHREC_MALLOC_ENV)
        env.pop("PYTHONPATH", None)
        envs.append(env)
    outs, error = trainer_bench.run_ranks([str(VPY), "-c", WORKER, cfg], envs, args.timeout)
    if error:
        return None, error[:160], None
    plan = next((line[6:] for line in outs[0][1].splitlines() if line.startswith("plan: ")), "?")
    res = json.loads(outs[0][0].strip().splitlines()[-1])
    return res["samples_per_s"], f"{plan}", res["digest"]


def run_ours(args, precision: str, ranks: int, data: Path) -> tuple[float | None, str]:
    targs = argparse.Namespace(steps=args.steps + args.warmup, warmup=args.warmup, log_every=args.log_every,
                               batch=args.batch, table_rows=args.table_rows, mlp="small", timeout=args.timeout,
                               data={"source": "binary", "paths": [str(data)], "evalFraction": 0.0})
    return trainer_bench.run(targs, precision, "cpu", ranks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--ids", nargs="+", default=["zipf", "narrow"], choices=["zipf", "narrow"],
                    help="id distributions (zipf: the headline, Criteo-like; narrow: our synthetic data's)")
    ap.add_argument("--zipf-alpha", type=float, default=1.05)
    ap.add_argument("--sharding", default=DEFAULT_SHARDING, choices=SHARDINGS, help="TorchRec sharding type of every table")
    ap.add_argument("--sides", nargs="+", default=["ours", "torchrec"], choices=["ours", "torchrec"],
                    help="run only one side (e.g. to compare TorchRec's sharding types)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="timed steps, both sides")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before them, both sides")
    ap.add_argument("--log-every", type=int, default=10, help="our trainer's window (must divide --warmup and --steps)")
    ap.add_argument("--batch", type=int, default=2048, help="per rank")
    ap.add_argument("--table-rows", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-install", action="store_true", help="do not create the TorchRec venv (skip TorchRec when missing)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.warmup % args.log_every or args.steps % args.log_every or not args.warmup:
        ap.error("--log-every must divide --warmup (> 0) and --steps, so that both sides time the same steps")

    skip = ensure_torchrec() if not args.no_install else (None if VPY.exists() else "--no-install and no .bench-venv/torchrec")
    if skip:
        print(f"# TorchRec skipped: {skip}")
    import torch

    work = Path(tempfile.mkdtemp(prefix="rectrain-torchrec-bench-"))
    total = args.warmup + args.steps
    data_rows = args.batch * max(args.ranks) * total  # one epoch of the largest world covers every step
    datasets: dict[str, Path] = {}
    expected: dict[tuple[str, int], str] = {}
    distinct: dict[str, float] = {}
    runs: dict[str, dict[str, list]] = {}
    try:
        for kind in args.ids:
            t0 = time.perf_counter()
            datasets[kind] = work / kind
            write_dataset(datasets[kind], kind, data_rows, args.table_rows, args.zipf_alpha, SEED)
            for ranks in args.ranks:
                expected[(kind, ranks)], d = expected_stream(datasets[kind], args, ranks, total)
                distinct.setdefault(kind, d)
            print(f"# {kind} ids: {data_rows:,} rows written in {time.perf_counter() - t0:.1f}s; "
                  f"a {args.batch}-row batch touches {distinct[kind]:,.0f} distinct rows per table on average", flush=True)

        cases = [(k, p, r) for k in args.ids for r in args.ranks for p in args.precisions]
        runs = {f"{k}/{p}/{r}": {"ours": [], "torchrec": [], "ours_by_repeat": [], "torchrec_by_repeat": [], "notes": []}
                for k, p, r in cases}
        load_before = loadavg()
        for rep in range(args.repeats):
            for kind, prec, ranks in cases:
                key = f"{kind}/{prec}/{ranks}"
                order = ("torchrec", "ours") if rep % 2 else ("ours", "torchrec")
                for which in order:
                    if (which == "torchrec" and skip) or which not in args.sides:
                        continue
                    t0 = time.time()
                    if which == "torchrec":
                        sps, note, digest = run_torchrec(args, prec, ranks, datasets[kind], data_rows)
                        if sps and digest != expected[(kind, ranks)]:
                            runs[key]["notes"].append("TorchRec's ids differ from ours: not counted")
                            note, sps = note + "; ids DIFFER", None
                    else:
                        sps, note = run_ours(args, prec, ranks, datasets[kind])
                    runs[key][f"{which}_by_repeat"].append(sps)  # None when failed: keeps the pairs aligned
                    if sps:
                        runs[key][which].append(sps)
                    elif "DIFFER" not in note:
                        runs[key]["notes"].append(f"{which} failed: {note}")
                    print(f"  rep {rep} {kind:<6} {prec} {ranks} rank(s) {which:<8} {(f'{sps:,.0f}' if sps else 'failed'):>10} "
                          f"samples/s  {note}; {time.time() - t0:.0f}s wall; load {loadavg()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print()
    print(f"# trainer vs TorchRec DMP  {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (ours), "
          f"torchrec 1.8.0 / torch 2.13.0 / fbgemm-gpu-cpu 1.8.0 (reference, sharding {args.sharding}, fused Adagrad), gloo")
    print(f"# DLRM 26 tables x {args.table_rows} rows, dim 16, MLPs [64,16]/[64,32,1], Adagrad, batch {args.batch}/rank, "
          f"{os.cpu_count()} threads split over the ranks; the same rows on both sides")
    print(f"# samples/s over {args.steps} timed steps after {args.warmup} warm-up steps, both sides; medians of {args.repeats} "
          f"runs; load average (1/5/15 min) before {load_before}, after {loadavg()}")
    print("# ours/TorchRec: ratio of the medians; paired: median of the per-repeat ratios (both sides back to back)")
    print(f"# ids: zipf = Zipf(alpha {args.zipf_alpha}) over all {args.table_rows:,} rows per table (headline); "
          f"narrow = our synthetic data's (<= 1000 distinct per table)")
    print(f"{'ids':<7} {'precision':<9} {'ranks':>5} {'rows/batch':>10} {'ours samples/s':>15} {'TorchRec samples/s':>19} "
          f"{'ours/TorchRec':>14} {'paired':>7}  target")
    summary = {}
    for kind, prec, ranks in cases:
        r = runs[f"{kind}/{prec}/{ranks}"]
        o = med(r["ours"]) if r["ours"] else None
        t = med(r["torchrec"]) if r["torchrec"] else None
        ratio = o / t if o and t else None
        pairs = [a / b for a, b in zip(r["ours_by_repeat"], r["torchrec_by_repeat"]) if a and b]
        paired = med(pairs) if pairs else None  # each repeat ran both sides back to back
        summary[f"{kind}/{prec}/{ranks}"] = {"ours": o, "torchrec": t, "ratio": ratio, "paired_ratio": paired}
        print(f"{kind:<7} {prec:<9} {ranks:>5} {distinct[kind]:>10,.0f} {(f'{o:,.0f}' if o else '-'):>15} "
              f"{(f'{t:,.0f}' if t else '-'):>19} {(f'{ratio:.2f}x' if ratio else '-'):>14} "
              f"{(f'{paired:.2f}x' if paired else '-'):>7}  "
              f"{'>= 1.2x' if ranks == 2 else ''}")
        for n in sorted(set(r["notes"])):
            print(f"          note: {n}")
    for kind in args.ids:
        for prec in args.precisions:
            one, two = summary.get(f"{kind}/{prec}/1", {}).get("ours"), summary.get(f"{kind}/{prec}/2", {}).get("ours")
            if one and two:
                print(f"ours {kind} {prec}: 2 ranks / 1 rank on {os.cpu_count()} cores = {two / one:.2f}x  (target >= 1.0x)")
    if args.json:
        out = {"machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "config": vars(args), "torchrec_skipped": skip, "load_before": load_before, "load_after": loadavg(),
               "distinct_rows_per_table_per_batch": distinct, "runs": runs, "median": summary}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
