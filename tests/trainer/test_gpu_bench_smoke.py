"""bench/gpu_bench.py's --smoke mode runs (on CPU here), so the GPU benchmark cannot rot unseen."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_bench.py"


def test_gpu_bench_smoke_runs_both_sides(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--precisions", "fp32", "bf16", "--json", str(out), "--workdir", str(tmp_path / "w")]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["precision"], r["side"]) for r in results] == [("fp32", "baseline"), ("fp32", "ours"), ("bf16", "baseline"),
                                                             ("bf16", "ours"), ("bf16", "ours-host")]
    _warmup, timed, window = bench.SHAPES["smoke"]["steps"]
    for r in results:
        assert r["windows"] == timed // window and r["samples_per_s"] > 0, r
