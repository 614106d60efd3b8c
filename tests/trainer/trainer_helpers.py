"""Helpers for the trainer tests (importable as `trainer_helpers`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def tiny_config(**over) -> dict:
    """A trainer section small enough for a test: 4 tables, 4 dense features."""
    cfg = {
        "model": {"embeddingDim": 8, "tableSizes": [50, 50, 100, 20], "numDenseFeatures": 4, "bottomMlp": [16, 8], "topMlp": [16]},
        "data": {"source": "synthetic", "synthetic": {"rows": 4000, "evalRows": 2000, "seed": 3}},
        "training": {"epochs": 1, "batchSize": 64, "seed": 1, "dataLoaderWorkers": 1, "optimizer": {"learningRate": 0.05}},
        "reporting": {"metricsPort": 0, "logEverySteps": 10},
    }
    for section, values in over.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_env(cfg: dict, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"RECTRAIN_TRAINER_CONFIG": json.dumps(cfg), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_trainer(cfg: dict, *args: str, cwd=None, **env) -> subprocess.Popen:
    """`rectrain-train` as the operator's pods run it (config in the env), in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "rectrain_trainer.cli", "--progress", "off", *args],
        env=trainer_env(cfg, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )


def start_ranks(cfg: dict, world: int, cwds=None, **env) -> list[subprocess.Popen]:
    """`world` ranks over gloo on this host; `cwds[r]` gives each rank its own working directory
    (with a relative checkpoint directory: a volume per pod)."""
    port = free_port()
    return [
        start_trainer(cfg, cwd=cwds[r] if cwds else None, RANK=r, LOCAL_RANK=r, WORLD_SIZE=world,
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
        for r in range(world)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def final_line(stdout: str) -> dict:
    """Parse `final: step=.. loss=.. auc=..` into a dict of floats."""
    for line in stdout.splitlines():
        if line.startswith("final:"):
            return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    raise AssertionError(f"no final line in output:\n{stdout}")


def write_criteo(path, rows, rng, bad_every=0):
    """Criteo TSV rows whose label follows C1 (< 10: 80 % clicks, else 20 %); a malformed row
    after every `bad_every` rows."""
    with open(path, "w") as f:
        for i in range(rows):
            c = rng.integers(0, 20, 26)
            y = int(rng.random() < (0.8 if c[0] < 10 else 0.2))
            dense = ["" if rng.random() < 0.3 else str(int(rng.integers(0, 50))) for _ in range(13)]
            cats = [f"{int(v):08x}" for v in c]
            f.write("\t".join([str(y), *dense, *cats]) + "\n")
            if bad_every and i % bad_every == 0:
                f.write("1\tnot-a-row\n")
