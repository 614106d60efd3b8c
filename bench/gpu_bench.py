#!/usr/bin/env python3
"""GPU benchmark (not a test): the rectrain trainer against a plain-PyTorch DLRM, one command.

For each shape (issue 14) and precision (fp32, tf32, fp16, bf16) it runs, in this one process:
- ours: rectrain_trainer.train.train() on a binary dataset of Criteo-like rows (Zipf ids over the
  whole tables) written once per shape; the trainer reads it like any dataset (the device-resident
  input path when it fits, the fused sparse Adagrad, the configured precision);
- baseline: a plain-PyTorch DLRM with one nn.EmbeddingBag(sparse=True) per table, the same MLPs and
  dot interaction, torch.optim.Adagrad on the sparse and the dense parameters, fed from a few batches
  of the same rows built on the device before the clock starts;
- ours-host (bf16 only, --host-precisions): ours with RECTRAIN_DEVICE_DATA=off, the input path of a
  dataset too big for the device: raw columns gathered on the host into a ring of pinned buffers,
  copied on a side stream and hashed on the device (data.BatchLoader).

Statistic (both sides): the median samples/s over timed windows of --window steps after the
warm-up steps, each window ended by a device sync (ours: the trainer's log windows, whose close
reads the loss; baseline: torch.cuda.synchronize). Also recorded: peak device memory
(torch.cuda.max_memory_allocated) and GPU utilisation (nvidia-smi sampled every 0.5 s in a thread,
the median over the timed windows), when present.

    python3 bench/gpu_bench.py --json out.json            # both shapes, all precisions (< 5 min on an H200)
    python3 bench/gpu_bench.py --shapes small --precisions bf16
    python3 bench/gpu_bench.py --smoke                    # tiny, on CPU too (what the test runs)

Cases run in order (small before large); a case that would start after --budget seconds is
skipped and listed as such, so one run stays inside its time limit. The JSON is rewritten after
every case, so a run stopped from outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for sub in ("api", "trainer"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import torch  # noqa: E402
from torch import nn  # noqa: E402

# steps: (warm-up steps, timed steps, window steps)
SHAPES = {
    "small": {"tables": 26, "rows": 100_000, "dim": 16, "bottom": [64, 16], "top": [64, 32], "batch": 2048,
              "steps": (20, 200, 20)},
    "large": {"tables": 26, "rows": 1_000_000, "dim": 128, "bottom": [512, 256, 128], "top": [1024, 1024, 512, 256],
              "batch": 65536, "steps": (10, 60, 10)},
    "smoke": {"tables": 26, "rows": 200, "dim": 8, "bottom": [16, 8], "top": [16], "batch": 128, "steps": (2, 4, 2)},
}
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
NUM_DENSE = 13
LR = 0.01


# ------------------------------------------------------------------------------------------- data


def zipf_ids(n: int, table_rows: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """[n] ids with P(rank k) ~ k^-alpha over all table_rows ids (the continuous inverse CDF,
    vectorised), each rank mapped to a fixed random id so that hot rows are spread over the table."""
    u = rng.random(n)
    a = 1.0 - alpha
    ranks = np.floor(((table_rows**a - 1.0) * u + 1.0) ** (1.0 / a)).astype(np.int64) - 1
    return rng.permutation(table_rows)[np.clip(ranks, 0, table_rows - 1)]


def write_dataset(out: Path, shape: dict, rows: int, seed: int = 0, alpha: float = 1.05) -> None:
    """rows Criteo-like rows in rectrain's binary format (what rectrain-preprocess writes)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    cats = np.empty((rows, shape["tables"]), np.uint32)
    for f in range(shape["tables"]):
        cats[:, f] = zipf_ids(rows, shape["rows"], alpha, rng)
    dense = np.log1p(rng.exponential(4.0, size=(rows, NUM_DENSE)).astype(np.float32))
    (out / "label.u8").write_bytes((rng.random(rows) < 0.25).astype(np.uint8).tobytes())
    (out / "dense.f32").write_bytes(dense.astype("<f4").tobytes())
    (out / "cat.u32").write_bytes(cats.astype("<u4").tobytes())
    meta = {"format": "rectrain-columnar-v1", "rows": rows, "numDense": NUM_DENSE, "numCat": shape["tables"],
            "rowsSkipped": 0, "sources": ["bench/gpu_bench.py: Zipf ids"]}
    (out / "meta.json").write_text(json.dumps(meta))


# -------------------------------------------------------------------------------------- utilisation


class GpuUtilSampler:
    """nvidia-smi's utilization.gpu every 0.5 s in a background thread: (time, percent) samples."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", str(torch.cuda.current_device()), "-lms", "500"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                continue

    def median_between(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.median(inside) if inside else None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


# --------------------------------------------------------------------------------------------- ours


class WindowRecorder:
    """A trainer reporter: (step, samples/s, time) at each log point."""

    def __init__(self):
        self.windows: dict[int, tuple[float | None, float]] = {}

    def update(self, progress, metrics) -> None:
        self.windows.setdefault(progress.step, (progress.samplesPerSecond, time.perf_counter()))


def run_ours(shape: dict, precision: str, device: str, data_dir: Path, device_data: str = "auto") -> dict:
    from rectrain_trainer.config import parse_config
    from rectrain_trainer.train import DEVICE_DATA_ENV, train

    warmup, timed, window = shape["steps"]
    cfg = parse_config({
        "model": {"embeddingDim": shape["dim"], "tableSizes": [shape["rows"]] * shape["tables"],
                  "numDenseFeatures": NUM_DENSE, "bottomMlp": shape["bottom"], "topMlp": shape["top"]},
        "data": {"source": "binary", "paths": [str(data_dir)], "evalFraction": 0},
        "training": {"epochs": 1, "maxSteps": warmup + timed, "batchSize": shape["batch"], "precision": precision,
                     "device": device, "seed": 0, "optimizer": {"sparse": "adagrad", "dense": "adagrad", "learningRate": LR}},
        "reporting": {"metricsPort": 0, "logEverySteps": window},
    })
    rec = WindowRecorder()
    before = os.environ.get(DEVICE_DATA_ENV)
    os.environ[DEVICE_DATA_ENV] = device_data
    try:
        train(cfg, reporter=rec)
    finally:
        if before is None:
            os.environ.pop(DEVICE_DATA_ENV, None)
        else:
            os.environ[DEVICE_DATA_ENV] = before
    timed_windows = sorted((s, sps, t) for s, (sps, t) in rec.windows.items() if s - window >= warmup and sps)
    start = rec.windows[warmup][1] if warmup in rec.windows else None
    return {"rates": [sps for _, sps, _ in timed_windows], "start": start,
            "end": timed_windows[-1][2] if timed_windows else None}


# ----------------------------------------------------------------------------------------- baseline


class PlainDLRM(nn.Module):
    """One nn.EmbeddingBag(sparse=True) per table, bottom MLP, pairwise dots, top MLP."""

    def __init__(self, shape: dict, device: torch.device):
        super().__init__()
        self.embs = nn.ModuleList(nn.EmbeddingBag(shape["rows"], shape["dim"], mode="sum", sparse=True, device=device)
                                  for _ in range(shape["tables"]))
        bound = math.sqrt(1.0 / shape["rows"])
        with torch.no_grad():
            for e in self.embs:
                e.weight.uniform_(-bound, bound)
        self.bottom = _mlp([NUM_DENSE, *shape["bottom"]], True).to(device)
        n = shape["tables"] + 1
        self.top = _mlp([shape["dim"] + n * (n - 1) // 2, *shape["top"], 1], False).to(device)
        self.register_buffer("tri", torch.triu_indices(n, n, 1, device=device))

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        z = self.bottom(dense)
        t = torch.stack([z, *(e(cat[:, i : i + 1]) for i, e in enumerate(self.embs))], 1)
        t = t.to(z.dtype)
        inter = torch.bmm(t, t.transpose(1, 2))[:, self.tri[0], self.tri[1]]
        return self.top(torch.cat([z, inter], 1)).squeeze(1)

    def sparse_parameters(self):
        return [e.weight for e in self.embs]

    def dense_parameters(self):
        return [*self.bottom.parameters(), *self.top.parameters()]


def _mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(shape: dict, precision: str, device: torch.device, data_dir: Path) -> dict:
    from rectrain_trainer.data import make_batch, open_binary
    from rectrain_trainer.train import _set_matmul_precision

    _set_matmul_precision(device, precision)
    warmup, timed, window = shape["steps"]
    table = open_binary(str(data_dir))
    sizes = np.full(shape["tables"], shape["rows"], np.int64)
    b = shape["batch"]
    batches = [make_batch(table, np.arange(i * b, (i + 1) * b), b, sizes).to(device) for i in range(4)]
    torch.manual_seed(0)
    model = PlainDLRM(shape, device)
    opts = [torch.optim.Adagrad(model.sparse_parameters(), lr=LR), torch.optim.Adagrad(model.dense_parameters(), lr=LR)]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    rates, start, t0 = [], None, None
    for step in range(warmup + timed):
        if step == warmup:
            _sync(device)
            start = t0 = time.perf_counter()
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(batch.dense, batch.cat)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.label)
        (scaler.scale(loss) if scaler else loss).backward()
        for o in opts:
            (scaler.step(o) if scaler else o.step())
        if scaler:
            scaler.update()
        for o in opts:
            o.zero_grad(set_to_none=True)
        if step >= warmup and (step + 1 - warmup) % window == 0:
            _sync(device)
            now = time.perf_counter()
            rates.append(window * b / (now - t0))
            t0 = now
    return {"rates": rates, "start": start, "end": t0}


# ------------------------------------------------------------------------------------------- driver


def run_case(side: str, shape: dict, precision: str, device: torch.device, data_dir: Path, util: GpuUtilSampler) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    if side == "baseline":
        out = run_baseline(shape, precision, device, data_dir)
    else:
        out = run_ours(shape, precision, device.type, data_dir, "off" if side == "ours-host" else "auto")
    row = {"samples_per_s": statistics.median(out["rates"]) if out["rates"] else None, "windows": len(out["rates"]),
           "window_rates": [round(r, 1) for r in out["rates"]], "wall_s": round(time.perf_counter() - started, 1)}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if out["start"] is not None and out["end"] is not None:
        row["gpu_util_pct"] = util.median_between(out["start"], out["end"])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["small", "large"])
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--sides", nargs="+", choices=["baseline", "ours", "ours-host"], default=["baseline", "ours", "ours-host"])
    ap.add_argument("--host-precisions", nargs="+", choices=PRECISIONS, default=["bf16"],
                    help="the precisions ours-host runs in (it is the same model as ours, fed from the host)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--smoke", action="store_true", help="the tiny shape only (seconds, CPU or GPU)")
    ap.add_argument("--budget", type=float, default=270.0, help="start no case after this many seconds")
    ap.add_argument("--json", help="write the results here (rewritten after every case)")
    ap.add_argument("--workdir", help="where the datasets go (default: a temporary directory, removed at the end)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.smoke:
        args.shapes = ["smoke"]
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    began = time.perf_counter()
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cpus": os.cpu_count()}
    print(f"# rectrain GPU benchmark: torch {env['torch']}, {env['gpu'] or 'CPU'}, {env['cpus']} CPUs", flush=True)
    print(f"{'shape':<6} {'prec':<5} {'side':<9} {'samples/s':>12} {'vs fp32':>8} {'vs base':>8} {'GPU %':>6} {'peak GiB':>9} {'wall s':>7}",
          flush=True)
    results: list[dict] = []
    util = GpuUtilSampler()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        for name in args.shapes:
            shape = SHAPES[name]
            warmup, timed, _ = shape["steps"]
            data_dir = work / f"data-{name}"
            if not data_dir.exists():
                write_dataset(data_dir, shape, shape["batch"] * (warmup + timed))
            for precision in args.precisions:
                for side in args.sides:
                    if side == "ours-host" and precision not in args.host_precisions:
                        continue
                    row = {"shape": name, "precision": precision, "side": side}
                    if precision == "fp16" and device.type != "cuda":
                        row["skipped"] = "fp16 needs CUDA"
                    elif time.perf_counter() - began > args.budget:
                        row["skipped"] = f"over the {args.budget:.0f} s budget"
                    else:
                        try:
                            row.update(run_case(side, shape, precision, device, data_dir, util))
                        except Exception as e:  # one failing case (e.g. out of memory) must not lose the others
                            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    results.append(row)
                    _print_row(row, results)
                    if args.json:
                        Path(args.json).write_text(json.dumps({"env": env, "shapes": {n: SHAPES[n] for n in args.shapes},
                                                               "results": results}, indent=1))
    finally:
        util.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# done in {time.perf_counter() - began:.0f} s", flush=True)
    return 0 if all("error" not in r for r in results) else 1


def _print_row(row: dict, results: list[dict]) -> None:
    def rate(shape, precision, side):
        for r in results:
            if (r["shape"], r["precision"], r["side"]) == (shape, precision, side):
                return r.get("samples_per_s")
        return None

    sps = row.get("samples_per_s")
    fp32 = rate(row["shape"], "fp32", row["side"])
    base = rate(row["shape"], row["precision"], "baseline") if row["side"] != "baseline" else None
    rel = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    shown = f"{sps:,.0f}" if sps else row.get("skipped") or row.get("error", "failed")[:60]
    util = row.get("gpu_util_pct")
    print(f"{row['shape']:<6} {row['precision']:<5} {row['side']:<9} {shown:>12} {rel(sps, fp32):>8} {rel(sps, base):>8} "
          f"{util if util is not None else '-':>6} {row.get('peak_mem_gib', '-'):>9} {row.get('wall_s', '-'):>7}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
