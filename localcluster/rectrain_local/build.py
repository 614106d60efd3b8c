"""Build kube-apiserver, kube-controller-manager and kube-scheduler from Debian's source package.

No registry ships these binaries, but Debian bookworm's `kubernetes` source package (1.20.2 with a
complete vendor/) builds offline. The result is cached outside the repo, keyed by version; the cache
counts as complete only when a marker written after the last binary exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .steps import StepFailed, is_root, run_logged, say

K8S_VERSION = "v1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
APT_PACKAGES = (
    "golang-go",
    "rsync",
    "jq",
    "golang-github-modern-go-reflect2-dev",
    "etcd-server",
    "openssl",
    "iproute2",
)
DEB_SRC_LIST = Path("/etc/apt/sources.list.d/rectrain-deb-src.sources")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
REFLECT2_FIXED = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
VERSION_PACKAGES = (
    "k8s.io/kubernetes/vendor/k8s.io/component-base/version",
    "k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version",
)


def cache_root() -> Path:
    return Path(os.environ.get("RECTRAIN_CACHE_DIR", Path.home() / ".cache" / "rectrain"))


@dataclass(frozen=True)
class BuildCache:
    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def marker(self) -> Path:
        return self.root / "COMPLETE"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def is_complete(self) -> bool:
        if not self.marker.is_file():
            return False
        return all(os.access(self.binary(name), os.X_OK) for name in BINARIES)


def k8s_cache() -> BuildCache:
    return BuildCache(cache_root() / f"k8s-{K8S_VERSION}")


def missing_apt_packages() -> list[str]:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *APT_PACKAGES], capture_output=True, text=True, check=False
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith("install ok installed")}
    return [package for package in APT_PACKAGES if package not in installed]


def _apt(step: str, args: list[str], log: Path) -> None:
    prefix = [] if is_root() else (["sudo", "-n"] if shutil.which("sudo") else [])
    if not is_root() and not prefix:
        raise StepFailed(step, ["apt-get", *args], None, "needs root (or sudo) to install system packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_logged(step, [*prefix, "apt-get", *args], log, env=env)


def has_deb_src() -> bool:
    listing = Path("/etc/apt/sources.list.d")
    candidates = [*listing.glob("*.sources"), *listing.glob("*.list"), Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("deb-src ") or (stripped.startswith("Types:") and "deb-src" in stripped):
                return True
    return False


def ensure_system_packages(log_dir: Path, *, need_source: bool) -> None:
    """Install the apt packages the local cluster needs; add a deb-src entry when the source is needed."""
    updated = False
    if need_source and not has_deb_src():
        say("adding a deb-src entry for Debian's sources")
        if not DEBIAN_SOURCES.is_file():
            raise StepFailed("deb-src entry", f"read {DEBIAN_SOURCES}", None, "no Debian sources file to copy")
        text = DEBIAN_SOURCES.read_text().replace("Types: deb\n", "Types: deb-src\n")
        DEB_SRC_LIST.write_text(text)
        _apt("apt-get update", ["update", "-q"], log_dir / "apt.log")
        updated = True
    missing = missing_apt_packages()
    if missing:
        say(f"installing system packages: {' '.join(missing)}")
        if not updated:
            _apt("apt-get update", ["update", "-q"], log_dir / "apt.log")
        _apt("apt-get install", ["install", "-y", "-q", "--no-install-recommends", *missing], log_dir / "apt.log")


def _go_env(gopath: Path, gocache: Path) -> dict[str, str]:
    return dict(
        os.environ,
        GOPATH=str(gopath),
        GOCACHE=str(gocache),
        GO111MODULE="off",
        GOPROXY="off",
        CGO_ENABLED="0",
        GOFLAGS="",
    )


def _patch_reflect2(tree: Path) -> None:
    """vendored reflect2 v1.0.1 segfaults under Go >= 1.18 on the first custom-object create."""
    vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
    for old in [*vendored.glob("*.go"), *vendored.glob("*.s")]:
        old.unlink()
    for new in [*REFLECT2_FIXED.glob("*.go"), *REFLECT2_FIXED.glob("*.s")]:
        if not new.name.endswith("_test.go"):
            shutil.copy2(new, vendored / new.name)


def build(force: bool = False) -> BuildCache:
    """Make sure the control-plane binaries exist in the cache; build them when they don't."""
    cache = k8s_cache()
    if cache.is_complete() and not force:
        return cache
    with _build_lock(cache.root):
        if cache.is_complete() and not force:  # another process built it while this one waited
            return cache
        return _build(cache)


@contextlib.contextmanager
def _build_lock(root: Path):
    """One build per cache at a time: two (two `make test` runs, a test session and `make setup`)
    would wipe each other's work directory."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another process is building the control plane; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(cache: BuildCache) -> BuildCache:
    started = time.monotonic()
    work = cache.root.with_name(cache.root.name + ".build")
    logs = cache.root.with_name(cache.root.name + ".logs")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cache.root, ignore_errors=True)
    work.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    total = 6

    def step(number: int, name: str) -> str:
        say(f"[{number}/{total}] {name} (elapsed {time.monotonic() - started:.0f}s)")
        return name

    step(1, "system packages")
    ensure_system_packages(logs, need_source=True)

    name = step(2, "download Debian's kubernetes source package")
    run_logged(name, ["apt-get", "source", "--download-only", "-q", "kubernetes"], logs / "source.log", cwd=work)
    tarballs = sorted(work.glob("kubernetes_*.orig.tar.gz"))
    if not tarballs:
        raise StepFailed(name, "apt-get source --download-only kubernetes", logs / "source.log", "no .orig.tar.gz")

    name = step(3, "unpack the source tree")
    with tarfile.open(tarballs[-1]) as archive:
        archive.extractall(work, filter="tar")
    trees = [p for p in work.iterdir() if p.is_dir() and p.name.startswith("kubernetes-")]
    if len(trees) != 1:
        raise StepFailed(name, f"tar xzf {tarballs[-1]}", None, f"expected one kubernetes-* directory in {work}")
    tree = trees[0]
    _patch_reflect2(tree)
    gopath = work / "gopath"
    (gopath / "src" / "k8s.io").mkdir(parents=True)
    (gopath / "src" / "k8s.io" / "kubernetes").symlink_to(tree)
    package_dir = gopath / "src" / "k8s.io" / "kubernetes"
    # GOPATH mode resolves imports from the working directory's path as $PWD spells it (the symlink).
    env = dict(_go_env(gopath, work / "gocache"), PWD=str(package_dir))

    name = step(4, "generate OpenAPI definitions (make gen_openapi)")
    make_env = dict(os.environ, GOCACHE=env["GOCACHE"], GOFLAGS="", GOPROXY="off")
    run_logged(name, ["make", "gen_openapi"], logs / "gen_openapi.log", cwd=tree, env=make_env)

    ldflags = " ".join(
        f"-X {pkg}.{key}={value}"
        for pkg in VERSION_PACKAGES
        for key, value in (("gitVersion", K8S_VERSION), ("gitMajor", "1"), ("gitMinor", "20"))
    )
    out_dir = work / "bin"
    out_dir.mkdir()
    for index, binary in enumerate(BINARIES):
        name = step(5, f"go build {binary} ({index + 1}/{len(BINARIES)})")
        run_logged(
            name,
            ["go", "build", "-tags", "selinux,notest", "-ldflags", ldflags, "-o", str(out_dir / binary), f"./cmd/{binary}"],
            logs / f"{binary}.log",
            cwd=package_dir,
            env=env,
        )

    step(6, "install into the cache")
    staging = cache.root.with_name(cache.root.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    for binary in BINARIES:
        shutil.move(str(out_dir / binary), staging / "bin" / binary)
    (staging / "COMPLETE").write_text(json.dumps({"version": K8S_VERSION, "binaries": list(BINARIES)}) + "\n")
    staging.rename(cache.root)
    shutil.rmtree(work, ignore_errors=True)
    say(f"control plane {K8S_VERSION} built in {time.monotonic() - started:.0f}s -> {cache.bin_dir}")
    return cache
