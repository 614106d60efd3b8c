#!/usr/bin/env python3
"""Trainer throughput benchmark (not a test): samples/s of `rectrain-train` on a Criteo-shaped DLRM.

Runs the real trainer in fresh processes (1 rank as a plain process, N ranks over
torch.distributed with MASTER_ADDR/RANK/WORLD_SIZE like the operator's pods), for each precision,
and prints a table. On CPU: fp32 vs bf16, 1 vs 2 ranks. With a GPU: fp32 vs fp16 vs bf16 on CUDA.

    python bench/trainer_bench.py                 # defaults: 26 tables x 100k rows, dim 16, batch 2048/rank
    python bench/trainer_bench.py --steps 40 --table-rows 10000 --ranks 1 2

Throughput of one run: global samples of the steps after the warm-up (the first --log-every steps, or
--warmup when a caller sets it) divided by the time they took (the sum of the logged windows' times);
each case runs once here. bench/torchrec_bench.py uses the same runner and the same statistic for
both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time

# small: the trainer's defaults; reference: the DLRM reference Criteo Kaggle MLPs (compute-bound on CPU)
MLPS = {
    "small": {"bottomMlp": [64, 16], "topMlp": [64, 32]},
    "reference": {"bottomMlp": [512, 256, 64, 16], "topMlp": [512, 256]},
}
LINE = re.compile(r"step=(\d+)/(\d+) .*samples_per_s=(\d+)")


def config(args, precision: str, device: str, ranks: int) -> dict:
    rows = args.batch * ranks * (args.steps + 1)
    # args.data (optional): a data section to use instead of the planted synthetic data (e.g. a binary
    # dataset: {"source": "binary", "paths": [...], "evalFraction": 0}).
    data = getattr(args, "data", None) or {"source": "synthetic", "synthetic": {"rows": rows, "evalRows": 1000, "seed": 1}}
    return {
        "model": {"embeddingDim": 16, "tableSizes": [args.table_rows] * 26, "numDenseFeatures": 13, **MLPS[args.mlp]},
        "data": data,
        "training": {"epochs": 1, "maxSteps": args.steps, "batchSize": args.batch, "precision": precision,
                     "device": device, "seed": 0, "dataLoaderWorkers": 1},
        "reporting": {"metricsPort": 0, "logEverySteps": args.log_every},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: list[str], envs: list[dict[str, str]], timeout: float) -> tuple[list[tuple[str, str]], str | None]:
    """One process per rank (one env each); their (stdout, stderr), and rank 0's last error line when any
    failed. Processes still running at the timeout are killed."""
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        err = [line for line in outs[0][1].strip().splitlines() if line.strip()]
        return outs, err[-1] if err else f"exit {procs[0].returncode}"
    return outs, None


def run(args, precision: str, device: str, ranks: int) -> tuple[float | None, str]:
    cfg = json.dumps(config(args, precision, device, ranks))
    threads = max(1, (os.cpu_count() or 1) // ranks) if device == "cpu" else 1
    port = free_port()
    envs = []
    for r in range(ranks):
        env = dict(os.environ, RECTRAIN_TRAINER_CONFIG=cfg, OMP_NUM_THREADS=str(threads))
        if ranks > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        envs.append(env)
    outs, error = run_ranks([sys.executable, "-m", "rectrain_trainer.cli", "--progress", "off"], envs, args.timeout)
    if error:
        return None, error[:80]
    sps = timed_rate([(int(m.group(1)), int(m.group(3))) for m in LINE.finditer(outs[0][1])],
                     getattr(args, "warmup", None) or args.log_every)
    return sps, f"{threads} thread(s)/rank"


def timed_rate(windows: list[tuple[int, int]], warmup: int) -> float | None:
    """Samples/s over the steps after `warmup` from the logged (step, samples/s) windows.

    A window ending at step s covers the steps since the previous logged step at s's rate, so
    (steps) / (sum of the windows' step counts / rates) is the rate of those steps timed end to end
    (every step is one global batch). Windows that start before `warmup` are left out.
    """
    steps = weighted = 0.0
    prev = 0
    for step, sps in windows:
        if prev >= warmup and sps > 0:
            steps += step - prev
            weighted += (step - prev) / sps
        prev = step
    return steps / weighted if steps else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2048, help="per rank")
    ap.add_argument("--table-rows", type=int, default=100_000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mlp", choices=sorted(MLPS), default="small")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    import torch

    cases = [("cpu", p, r) for r in args.ranks for p in ("fp32", "bf16")]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        cases += [("cuda", p, r) for r in args.ranks if r <= n for p in ("fp32", "fp16", "bf16")]
    print(f"# rectrain trainer benchmark  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"# DLRM 26 tables x {args.table_rows} rows, dim 16, {args.mlp} MLPs {MLPS[args.mlp]}, batch {args.batch}/rank, {args.steps} steps")
    print(f"{'device':<6} {'precision':<9} {'ranks':>5} {'samples/s':>12} {'vs fp32':>8}  note")
    base: dict[tuple[str, int], float] = {}
    for device, prec, ranks in cases:
        t0 = time.time()
        sps, note = run(args, prec, device, ranks)
        if prec == "fp32" and sps:
            base[(device, ranks)] = sps
        rel = f"{sps / base[(device, ranks)]:.2f}x" if sps and (device, ranks) in base else "-"
        shown = f"{sps:,.0f}" if sps else "failed"
        print(f"{device:<6} {prec:<9} {ranks:>5} {shown:>12} {rel:>8}  {note}, {time.time() - t0:.0f}s wall", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
