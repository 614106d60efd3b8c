"""Shared helpers for the delivery tests: the repo layout, the venv's helm/kubectl, running them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rectrain-operator"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A binary from the venv (installed by `rectrain-local tools`), else from PATH; skip if missing."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (run `make tools` / `rectrain-local tools`)")
    return found


def run(cmd: list[str], *, kubeconfig: str | None = None, check: bool = True, timeout: float = 120,
        input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    env.setdefault("HELM_CACHE_HOME", "/tmp/rectrain-helm/cache")
    env.setdefault("HELM_CONFIG_HOME", "/tmp/rectrain-helm/config")
    env.setdefault("HELM_DATA_HOME", "/tmp/rectrain-helm/data")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result
