#!/usr/bin/env python3
"""Sharded embedding tables benchmark (not a test): our trainer's model.sharding (replicated,
table, row, auto) against each other and against TorchRec's DLRM under DistributedModelParallel,
2 CPU ranks over gloo, on Criteo-like ids; plus each mode's per-rank memory.

    .venv/bin/python bench/sharding_bench.py                      # 2 ranks, 3 repeats, 1M rows/table
    .venv/bin/python bench/sharding_bench.py --table-rows 200000 --repeats 5 --json out.json

Config: 26 tables x --table-rows rows (default 1M: 26M rows), dim 16, 13 dense features, MLPs
[64,16] / [64,32,1], dot interaction, Adagrad lr 0.01, --batch rows per rank, fp32, 2 ranks each
with CPUs/2 threads. Ids: Zipf(--zipf-alpha) over all rows of every table, hot ids scattered by a
fixed permutation (torchrec_bench.draw_ids): millions of distinct values in all, a batch touches
thousands of distinct rows per table. Both sides read the same rows in the same order (the dataset
and TorchRec's worker are torchrec_bench's; TorchRec builds its batches before the clock starts,
which favours it; ours reads through its own input pipeline).

Statistic, the same for every side: global samples/s over --steps timed steps after --warmup
untimed ones (ours: its logged windows, trainer_bench.timed_rate; TorchRec: between barriers);
the figure is the median over --repeats runs, the sides interleaved (order rotating per repeat)
so load spikes on a shared machine hit all of them.

What each comparison favours: replicated vs sharded on 2 CPU ranks of one host compares an
all_gather of sparse gradients (replicated) with three all_to_alls (sharded) and half the optimizer
work per rank; it says nothing about a cluster's network. TorchRec's fused FBGEMM kernels and
optimizer-in-backward favour it on compute; its prebuilt batches favour it on input.

Memory: each of our ranks logs its embedding rows and bytes (parameters + optimizer state) and its
peak RSS; the table prints them per mode (TorchRec's worker logs neither).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchrec_bench  # noqa: E402 - its dataset, its TorchRec worker and installer
import trainer_bench  # noqa: E402 - its process runner and window timing

MODES = ["replicated", "table", "row", "auto"]
EMBEDDINGS = re.compile(r"embeddings rank (\d+): (\d+) rows, (\d+) param bytes, (\d+) optimizer state bytes")
PEAK = re.compile(r"rank (\d+) peak RSS (\d+) bytes")
PLAN = re.compile(r"sharding \w+: (.*) over \d+ ranks")


def run_ours(args, mode: str, data: Path) -> tuple[float | None, str, dict]:
    """(samples/s, note, memory {rank: (embedding bytes, peak RSS)}) of one 2-rank run."""
    targs = argparse.Namespace(steps=args.steps + args.warmup, warmup=args.warmup, log_every=args.log_every,
                               batch=args.batch, table_rows=args.table_rows, mlp="small",
                               data={"source": "binary", "paths": [str(data)], "evalFraction": 0.0})
    cfg = trainer_bench.config(targs, "fp32", "cpu", args.ranks)
    cfg["model"]["sharding"] = mode
    threads = max(1, (os.cpu_count() or 1) // args.ranks)
    port = trainer_bench.free_port()
    envs = [dict(os.environ, RECTRAIN_TRAINER_CONFIG=json.dumps(cfg), OMP_NUM_THREADS=str(threads), RANK=str(r),
                 LOCAL_RANK=str(r), WORLD_SIZE=str(args.ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            for r in range(args.ranks)]
    outs, error = trainer_bench.run_ranks([sys.executable, "-m", "rectrain_trainer.cli", "--progress", "off"], envs,
                                          args.timeout)
    if error:
        return None, error[:120], {}
    windows = [(int(m.group(1)), int(m.group(3))) for m in trainer_bench.LINE.finditer(outs[0][1])]
    sps = trainer_bench.timed_rate(windows, args.warmup)
    memory = {}
    for _out, err in outs:
        for m in EMBEDDINGS.finditer(err):
            memory.setdefault(int(m.group(1)), [0, 0])[0] = int(m.group(3)) + int(m.group(4))
        for m in PEAK.finditer(err):
            memory.setdefault(int(m.group(1)), [0, 0])[1] = int(m.group(2))
    plan = PLAN.search(outs[0][1])
    return sps, plan.group(1) if plan else "replicated", memory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--torchrec", choices=["yes", "no"], default="yes", help="include TorchRec DMP (table_wise)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="timed steps, every side")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    ap.add_argument("--log-every", type=int, default=10, help="our window (must divide --warmup and --steps)")
    ap.add_argument("--batch", type=int, default=2048, help="per rank")
    ap.add_argument("--table-rows", type=int, default=1_000_000)
    ap.add_argument("--zipf-alpha", type=float, default=1.05)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.warmup % args.log_every or args.steps % args.log_every or not args.warmup:
        ap.error("--log-every must divide --warmup (> 0) and --steps, so that every side times the same steps")
    skip = torchrec_bench.ensure_torchrec() if args.torchrec == "yes" else "--torchrec no"
    if skip:
        print(f"# TorchRec skipped: {skip}")
    sides = list(args.modes) + ([] if skip else ["torchrec"])

    work = Path(tempfile.mkdtemp(prefix="rectrain-sharding-bench-"))
    total = args.warmup + args.steps
    data_rows = args.batch * args.ranks * total
    tr_args = argparse.Namespace(table_rows=args.table_rows, batch=args.batch, steps=args.steps, warmup=args.warmup,
                                 sharding="table_wise", timeout=args.timeout)
    rates: dict[str, list[float]] = {s: [] for s in sides}
    notes: dict[str, str] = {}
    memory: dict[str, dict] = {}
    try:
        t0 = time.perf_counter()
        data = work / "zipf"
        torchrec_bench.write_dataset(data, "zipf", data_rows, args.table_rows, args.zipf_alpha, torchrec_bench.SEED)
        digest, distinct = torchrec_bench.expected_stream(data, tr_args, args.ranks, total)
        print(f"# zipf ids: {data_rows:,} rows written in {time.perf_counter() - t0:.1f}s; a {args.batch}-row batch "
              f"touches {distinct:,.0f} distinct rows per table on average", flush=True)
        load_before = torchrec_bench.loadavg()
        for rep in range(args.repeats):
            for side in sides[rep % len(sides):] + sides[: rep % len(sides)]:
                t0 = time.time()
                if side == "torchrec":
                    sps, note, got = torchrec_bench.run_torchrec(tr_args, "fp32", args.ranks, data, data_rows)
                    if sps and got != digest:
                        sps, note = None, note + "; ids DIFFER: not counted"
                else:
                    sps, note, mem = run_ours(args, side, data)
                    memory.setdefault(side, mem)
                notes[side] = note
                if sps:
                    rates[side].append(sps)
                print(f"  rep {rep} {side:<10} {(f'{sps:,.0f}' if sps else 'failed'):>10} samples/s  {note}; "
                      f"{time.time() - t0:.0f}s wall; load {torchrec_bench.loadavg()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {s: statistics.median(v) if v else None for s, v in rates.items()}
    base, ref = med.get("replicated"), med.get("torchrec")
    print()
    print(f"# sharded embeddings, {platform.machine()}, {os.cpu_count()} CPUs, {args.ranks} gloo ranks x "
          f"{max(1, (os.cpu_count() or 1) // args.ranks)} threads; load before {load_before}, after {torchrec_bench.loadavg()}")
    print(f"# DLRM 26 x {args.table_rows:,} rows, dim 16, Adagrad, fp32, batch {args.batch}/rank, Zipf({args.zipf_alpha}) "
          f"ids; samples/s over {args.steps} steps after {args.warmup}; median of {args.repeats} interleaved runs")
    print(f"{'side':<11} {'plan':<34} {'samples/s':>10} {'/replicated':>12} {'/TorchRec':>10}")
    for s in sides:
        m = med[s]
        print(f"{s:<11} {notes.get(s, '')[:34]:<34} {(f'{m:,.0f}' if m else '-'):>10} "
              f"{(f'{m / base:.2f}x' if m and base else '-'):>12} {(f'{m / ref:.2f}x' if m and ref else '-'):>10}")
    print()
    print(f"{'mode':<11} {'rank':>4} {'embedding GiB (params+state)':>29} {'peak RSS GiB':>13}")
    for s in args.modes:
        for rank, (emb, peak) in sorted(memory.get(s, {}).items()):
            print(f"{s:<11} {rank:>4} {emb / 2**30:>29.2f} {peak / 2**30:>13.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "rates": rates, "median": med, "notes": notes,
                                               "memory": memory, "distinct_rows_per_table": distinct}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
