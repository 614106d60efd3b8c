#!/usr/bin/env python3
"""Trainer vs TorchRec benchmark (not a test): samples/s of our trainer against TorchRec's DLRM
under DistributedModelParallel on the same config, on CPU, 1 and 2 ranks, fp32 and bf16, one run.

    .venv/bin/python bench/torchrec_bench.py                  # 3 repeats of every case
    .venv/bin/python bench/torchrec_bench.py --repeats 5 --json out.json

Config (Criteo shape): 26 tables x 100k rows, dim 16, 13 dense features, bottom MLP [64, 16],
top MLP [64, 32, 1], dot interaction, Adagrad lr 0.01, batch 2048 per rank. Ranks are separate
processes over gloo (MASTER_ADDR/RANK/WORLD_SIZE), OMP_NUM_THREADS = CPUs / ranks.

- ours: `rectrain-train` via bench/trainer_bench.py's runner (median samples/s of its logged
  windows after the warm-up one; includes its own input pipeline on synthetic data).
- TorchRec: torchrec.models.dlrm.DLRM wrapped in DLRMTrain and DistributedModelParallel (planner
  on CPU, fused Adagrad applied in backward for the embeddings, Adagrad for the dense part), bf16
  via torch.autocast; inputs are pre-built random batches (no input pipeline), timed after
  --warmup steps. Their ids are drawn like our synthetic data's (at most 1000 distinct values
  per feature, skewed popularity), so both sides touch about as many embedding rows per step.

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
import statistics
import subprocess
import sys
import time
from pathlib import Path

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

# The TorchRec side, run by the venv's python in each rank process.
WORKER = r'''
import json, os, sys, time
import torch
import torch.distributed as dist
cfg = json.loads(sys.argv[1])
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
dist.init_process_group("gloo", rank=rank, world_size=world)
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
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
plan = EmbeddingShardingPlanner(topology=topo).collective_plan(model, pg=dist.GroupMember.WORLD)
dmp = DistributedModelParallel(module=model, device=dev, plan=plan)
dense_opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adagrad(ps, lr=cfg["lr"]))
opt = CombinedOptimizer([dmp.fused_optimizer, dense_opt])
if rank == 0:
    kinds = sorted({str(s.sharding_type) for m in plan.plan.values() for s in m.values()})
    print("plan:", ",".join(kinds), file=sys.stderr, flush=True)

from torchrec.datasets.utils import Batch
g = torch.Generator().manual_seed(100 + rank)
batches = []
for _ in range(4):
    # Feature-major, one id per feature per sample, drawn like our synthetic data (data.py
    # synthetic_table): min(rows, 1000) distinct values per feature, popularity skewed as u**2.
    distinct = min(R, 1000)
    ids = (distinct * torch.rand(T, B, generator=g) ** 2).long().clamp_(max=distinct - 1)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=names, values=ids.reshape(-1), lengths=torch.ones(T * B, dtype=torch.int32))
    batches.append(Batch(dense_features=torch.rand(B, 13, generator=g), sparse_features=kjt,
                         labels=torch.randint(0, 2, (B,), generator=g).float()))
bf16 = cfg["precision"] == "bf16"

def step(i):
    b = batches[i % len(batches)]
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
for i in range(cfg["steps"]):
    loss = step(i)
dist.barrier()
dt = time.perf_counter() - t0
if rank == 0:
    print(json.dumps({"samples_per_s": B * world * cfg["steps"] / dt, "loss": float(loss)}), flush=True)
dist.destroy_process_group()
'''


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_torchrec() -> str | None:
    """None when TorchRec imports in the bench venv; else the reason it is skipped."""
    probe = [str(VPY), "-c", "import torchrec, fbgemm_gpu, torch; print(torch.__version__, torchrec.__version__)"]
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


def run_torchrec(args, precision: str, ranks: int) -> tuple[float | None, str]:
    cfg = json.dumps({"dim": 16, "rows": args.table_rows, "batch": args.batch, "lr": 0.01, "precision": precision,
                      "steps": args.steps, "warmup": args.warmup})
    threads = max(1, (os.cpu_count() or 1) // ranks)
    port = trainer_bench.free_port()
    envs = []
    for r in range(ranks):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.pop("PYTHONPATH", None)
        envs.append(env)
    outs, error = trainer_bench.run_ranks([str(VPY), "-c", WORKER, cfg], envs, args.timeout)
    if error:
        return None, error[:160]
    plan = next((line[6:] for line in outs[0][1].splitlines() if line.startswith("plan: ")), "?")
    return json.loads(outs[0][0].strip().splitlines()[-1])["samples_per_s"], f"sharding {plan}"


def run_ours(args, precision: str, ranks: int) -> tuple[float | None, str]:
    targs = argparse.Namespace(steps=args.steps + args.warmup, log_every=args.log_every, batch=args.batch,
                               table_rows=args.table_rows, mlp="small", timeout=args.timeout)
    return trainer_bench.run(targs, precision, "cpu", ranks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="timed steps (TorchRec); ours runs steps+warmup and drops its first window")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2048, help="per rank")
    ap.add_argument("--table-rows", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-install", action="store_true", help="do not create the TorchRec venv (skip TorchRec when missing)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    skip = ensure_torchrec() if not args.no_install else (None if VPY.exists() else "--no-install and no .bench-venv/torchrec")
    if skip:
        print(f"# TorchRec skipped: {skip}")
    import torch

    cases = [(p, r) for r in args.ranks for p in args.precisions]
    runs: dict[str, dict[str, list]] = {f"{p}/{r}": {"ours": [], "torchrec": [], "notes": []} for p, r in cases}
    load_before = loadavg()
    for rep in range(args.repeats):
        for prec, ranks in cases:
            key = f"{prec}/{ranks}"
            order = ("torchrec", "ours") if rep % 2 else ("ours", "torchrec")
            for which in order:
                if which == "torchrec" and skip:
                    continue
                t0 = time.time()
                sps, note = (run_torchrec if which == "torchrec" else run_ours)(args, prec, ranks)
                if sps:
                    runs[key][which].append(sps)
                else:
                    runs[key]["notes"].append(f"{which} failed: {note}")
                print(f"  rep {rep} {prec} {ranks} rank(s) {which:<8} {(f'{sps:,.0f}' if sps else 'failed'):>10} samples/s  "
                      f"{note}; {time.time() - t0:.0f}s wall; load {loadavg()}", flush=True)

    med = statistics.median
    print()
    print(f"# trainer vs TorchRec DMP  {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (ours), "
          f"torchrec 1.8.0 / torch 2.13.0 / fbgemm-gpu-cpu 1.8.0 (reference), gloo")
    print(f"# DLRM 26 tables x {args.table_rows} rows, dim 16, MLPs [64,16]/[64,32,1], Adagrad, batch {args.batch}/rank, "
          f"{os.cpu_count()} threads split over the ranks")
    print(f"# medians of {args.repeats} runs; load average (1/5/15 min) before {load_before}, after {loadavg()}")
    print(f"{'precision':<9} {'ranks':>5} {'ours samples/s':>15} {'TorchRec samples/s':>19} {'ours/TorchRec':>14}  target")
    summary = {}
    for prec, ranks in cases:
        r = runs[f"{prec}/{ranks}"]
        o = med(r["ours"]) if r["ours"] else None
        t = med(r["torchrec"]) if r["torchrec"] else None
        ratio = o / t if o and t else None
        summary[f"{prec}/{ranks}"] = {"ours": o, "torchrec": t, "ratio": ratio}
        print(f"{prec:<9} {ranks:>5} {(f'{o:,.0f}' if o else '-'):>15} {(f'{t:,.0f}' if t else '-'):>19} "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>14}  {'>= 1.2x' if ranks == 2 else ''}")
        for n in sorted(set(r["notes"])):
            print(f"          note: {n}")
    for prec in args.precisions:
        one, two = summary.get(f"{prec}/1", {}).get("ours"), summary.get(f"{prec}/2", {}).get("ours")
        if one and two:
            print(f"ours {prec}: 2 ranks / 1 rank on {os.cpu_count()} cores = {two / one:.2f}x  (target >= 1.0x)")
    if args.json:
        out = {"machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "config": vars(args), "torchrec_skipped": skip, "load_before": load_before, "load_after": loadavg(),
               "runs": runs, "median": summary}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
