#!/usr/bin/env python3
"""Data benchmark (not a test): Criteo TSV -> binary conversion and the training input pipeline.

    .venv/bin/python bench/data_bench.py                 # 200k rows, 3 repeats
    .venv/bin/python bench/data_bench.py --rows 500000 --repeats 5 --json out.json

1. conversion: rows/s of `rectrain_trainer.data.preprocess` (what `rectrain-preprocess` runs) on a
   generated Criteo-format TSV (13 integer + 26 hex columns, ~10% of values missing), against
   pandas parsing the same file into a DataFrame, three ways: `read_csv(sep="\\t", header=None)`
   with its defaults (what the target was set against); the pyarrow engine with every column's
   type given; and the fastest pandas setup measured here (pyarrow engine, pyarrow-backed columns,
   Arrow's own type inference). pandas does no log-transform, hex decoding or writing, and the
   pyarrow engine parses on all CPUs while `preprocess` uses one: both favour pandas. pandas
   2.3.3 and pyarrow 21.0.0 are not project dependencies: they are pip-installed on first use
   into .bench-venv/pandas-site (git-ignored) and run in a subprocess with that directory on
   PYTHONPATH. `preprocess` uses the vectorized parser (`rectrain_trainer.criteo_fast`);
   --reference also times the line-by-line reference parser it is tested against. Besides the
   ratio of the medians, the table shows the median of the per-repeat ratios (each repeat times
   ours and the pandas setups back to back, so load spikes on a shared machine hit all).
2. input pipeline: batches/s that the trainer's `BatchLoader` (1 prefetch thread, as
   `dataLoaderWorkers: 1`) yields from the converted, memory-mapped dataset at batch 2048, 26 tables
   x 100k rows, against the rate the trainer consumes batches: samples/s / batch of one rank
   (1 rank, bf16: the fastest consumer on CPU), measured with bench/trainer_bench.py's runner.

Every figure is the median of --repeats runs in this process; the table shows the ratios.
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

ROOT = Path(__file__).resolve().parent.parent
PANDAS_PIN = ["pandas==2.3.3", "pyarrow==21.0.0", "python-dateutil", "pytz", "tzdata", "six"]
PANDAS_SITE = ROOT / ".bench-venv" / "pandas-site"

# argv: path, mode.
#   defaults: read_csv as most code calls it (C engine, every type inferred: int64/float64/object).
#   pyarrow-dtypes: the pyarrow engine (multi-threaded) with every column's type given as numpy
#     types (uint8 label, float32 dense, str categories). pandas casts after Arrow's read, so on
#     this file it is no faster than the C engine.
#   fastest: the pyarrow engine with pyarrow-backed columns and Arrow's own type inference (int64
#     counts, string categories): no conversion at all; the fastest pandas setup measured here.
PANDAS_SNIPPET = r"""
import sys, time, pandas as pd
path, mode = sys.argv[1], sys.argv[2]
kw = {
    "defaults": {},
    "pyarrow-dtypes": dict(engine="pyarrow", dtype={0: "uint8", **{i: "float32" for i in range(1, 14)},
                                                    **{i: "string[pyarrow]" for i in range(14, 40)}}),
    "fastest": dict(engine="pyarrow", dtype_backend="pyarrow"),
}[mode]
t0 = time.perf_counter()
df = pd.read_csv(path, sep="\t", header=None, **kw)
dt = time.perf_counter() - t0
assert df.shape[1] == 40, df.shape
print(f"{len(df)} {dt} {pd.__version__}")
"""
PANDAS_MODES = {"pandas": "defaults", "pandas_pyarrow_dtypes": "pyarrow-dtypes", "pandas_fastest": "fastest"}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """A Criteo-format TSV: label, 13 non-negative/negative integers, 26 8-digit hex categories; ~10% empty."""
    rng = np.random.default_rng(seed)
    chunk = 50_000
    with open(path, "w") as fh:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            lab = rng.integers(0, 2, n)
            dense = rng.geometric(0.05, (n, 13)) - 2  # mostly small counts, a few -1
            cats = rng.integers(0, 2**32, (n, 26), dtype=np.uint64)
            miss_d = rng.random((n, 13)) < 0.1
            miss_c = rng.random((n, 26)) < 0.1
            lines = []
            for i in range(n):
                d = ["" if miss_d[i, j] else str(dense[i, j]) for j in range(13)]
                c = ["" if miss_c[i, j] else f"{cats[i, j]:08x}" for j in range(26)]
                lines.append("\t".join([str(lab[i]), *d, *c]))
            fh.write("\n".join(lines) + "\n")


def ensure_pandas() -> str | None:
    """Path to add to PYTHONPATH for pandas, or None (with a printed reason) when it cannot be installed."""
    probe = [sys.executable, "-c", "import pandas, pyarrow"]
    env = dict(os.environ, PYTHONPATH=str(PANDAS_SITE))
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return str(PANDAS_SITE)
    print(f"# installing {' '.join(PANDAS_PIN)} into {PANDAS_SITE.relative_to(ROOT)} (benchmark only)", flush=True)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PANDAS_SITE), *PANDAS_PIN],
                       capture_output=True, text=True)
    if r.returncode != 0 or subprocess.run(probe, env=env, capture_output=True).returncode != 0:
        print(f"# pandas baseline skipped: install failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        return None
    return str(PANDAS_SITE)


def time_preprocess(tsv: Path, work: Path, parser: str = "fast") -> float:
    from rectrain_trainer.data import preprocess

    out = work / ("bin" if parser == "fast" else f"bin-{parser}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    meta = preprocess([str(tsv)], str(out), progress=False, parser=parser)
    dt = time.perf_counter() - t0
    return meta["rows"] / dt


def time_pandas(tsv: Path, site: str, mode: str = "defaults") -> tuple[float, str]:
    r = subprocess.run([sys.executable, "-c", PANDAS_SNIPPET, str(tsv), mode], env=dict(os.environ, PYTHONPATH=site),
                       capture_output=True, text=True, check=True)
    rows, dt, version = r.stdout.split()
    return int(rows) / float(dt), version


def time_pipeline(data_dir: Path, batch: int, table_rows: int, min_seconds: float) -> float:
    """Batches/s of the trainer's BatchLoader over the memory-mapped dataset (whole epochs, >= min_seconds)."""
    from rectrain_trainer.data import BatchLoader, open_binary

    t = open_binary(str(data_dir))
    sizes = [table_rows] * 26
    n = 0
    epoch = 0
    t0 = time.perf_counter()
    while True:
        for b in BatchLoader(t, batch, 1, 0, seed=1, epoch=epoch, table_sizes=sizes, workers=1):
            n += 1 if b.label.shape[0] == batch else b.label.shape[0] / batch
        epoch += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def trainer_rate(args, precision: str) -> float | None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import trainer_bench

    targs = argparse.Namespace(steps=args.trainer_steps, log_every=10, batch=args.batch, table_rows=args.table_rows,
                               mlp="small", timeout=600)
    sps, note = trainer_bench.run(targs, precision, "cpu", 1)
    if sps is None:
        print(f"# trainer run failed: {note}")
    return sps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the generated TSV")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--table-rows", type=int, default=100_000)
    ap.add_argument("--trainer-steps", type=int, default=40)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="trainer precision for the consumption rate")
    ap.add_argument("--pipeline-seconds", type=float, default=3.0)
    ap.add_argument("--reference", action="store_true", help="also time the line-by-line reference parser (slow)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    site = ensure_pandas()
    work = Path(tempfile.mkdtemp(prefix="rectrain-databench-"))
    med = statistics.median
    load_before = loadavg()
    res: dict = {"conversion": [], **{k: [] for k in PANDAS_MODES}, "pipeline": [], "trainer": [], "reference": []}
    try:
        tsv = work / "criteo.tsv"
        t0 = time.perf_counter()
        write_tsv(tsv, args.rows)
        size_mb = tsv.stat().st_size / 1e6
        print(f"# generated {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f}s", flush=True)
        pandas_version = None
        for rep in range(args.repeats):
            res["conversion"].append(time_preprocess(tsv, work))
            if args.reference:
                res["reference"].append(time_preprocess(tsv, work, "reference"))
            if site:  # back to back with ours; the order of the pandas setups rotates per repeat
                modes = list(PANDAS_MODES.items())
                for key, mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:
                    rate, pandas_version = time_pandas(tsv, site, mode)
                    res[key].append(rate)
            res["pipeline"].append(time_pipeline(work / "bin", args.batch, args.table_rows, args.pipeline_seconds))
            sps = trainer_rate(args, args.precision)
            if sps:
                res["trainer"].append(sps / args.batch)
            print(f"  rep {rep}: preprocess {res['conversion'][-1]:,.0f} rows/s"
                  + (f", reference parser {res['reference'][-1]:,.0f} rows/s" if args.reference else "")
                  + (f", pandas defaults {res['pandas'][-1]:,.0f} / pyarrow+dtypes {res['pandas_pyarrow_dtypes'][-1]:,.0f}"
                     f" / fastest {res['pandas_fastest'][-1]:,.0f} rows/s" if site else "")
                  + f", pipeline {res['pipeline'][-1]:,.1f} batches/s"
                  + (f", trainer {res['trainer'][-1]:,.2f} batches/s" if sps else "") + f"  load {loadavg()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    print()
    print(f"# rectrain data benchmark  {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}" + (f", pandas {pandas_version}" if pandas_version else ""))
    print(f"# TSV {args.rows:,} rows ({size_mb:.0f} MB); pipeline batch {args.batch}, 26 tables x {args.table_rows} rows; "
          f"trainer 1 rank {args.precision} {os.cpu_count()} threads")
    print(f"# medians of {args.repeats} runs; load average (1/5/15 min) before {load_before}, after {loadavg()}")
    m = {k: (med(v) if v else None) for k, v in res.items()}
    paired = {k: med([a / b for a, b in zip(res["conversion"], res[k])]) if res[k] else None for k in PANDAS_MODES}
    print(f"{'measure':<62} {'ours':>14} {'baseline':>14} {'ratio':>7}  target")
    if m["pandas"]:
        labels = {"pandas": "pandas.read_csv defaults", "pandas_pyarrow_dtypes": "pandas pyarrow engine+dtypes",
                  "pandas_fastest": "pandas fastest (pyarrow engine+backend)"}
        for k, label in labels.items():
            target = ">= 3x  (set against the defaults)" if k == "pandas" else ""
            print(f"{'TSV -> binary rows/s vs ' + label:<62} {m['conversion']:>14,.0f} {m[k]:>14,.0f} "
                  f"{m['conversion'] / m[k]:>6.2f}x  {target}  (median of per-repeat ratios {paired[k]:.2f}x)")
        if m["reference"]:
            print(f"{'  reference parser vs pandas.read_csv defaults':<62} {m['reference']:>14,.0f} {m['pandas']:>14,.0f} "
                  f"{m['reference'] / m['pandas']:>6.2f}x")
    else:
        print(f"{'TSV -> binary rows/s':<62} {m['conversion']:>14,.0f} {'(no pandas)':>14}")
        if m["reference"]:
            print(f"{'  reference parser rows/s':<62} {m['reference']:>14,.0f}")
    if m["trainer"]:
        print(f"{'input pipeline vs trainer batches/s':<62} {m['pipeline']:>14,.1f} {m['trainer']:>14,.2f} "
              f"{m['pipeline'] / m['trainer']:>6.1f}x  >= 5x")
    else:
        print(f"{'input pipeline batches/s':<62} {m['pipeline']:>14,.1f} {'(no trainer)':>14}")
    if args.json:
        out = {"machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "config": vars(args), "pandas_version": pandas_version, "load_before": load_before, "load_after": loadavg(),
               "runs": res, "median": m,
               "ratios": {**{f"conversion_vs_{k}": m["conversion"] / m[k] if m[k] else None for k in PANDAS_MODES},
                          **{f"conversion_vs_{k}_paired_median": paired[k] for k in PANDAS_MODES},
                          "reference_vs_pandas": m["reference"] / m["pandas"] if m["reference"] and m["pandas"] else None,
                          "pipeline_vs_trainer": m["pipeline"] / m["trainer"] if m["trainer"] else None}}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
