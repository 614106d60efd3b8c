"""Runs inside a pod's network namespace (via `ip netns exec`, which also gives it a private mount
namespace and the pod's /etc/hosts): mounts the pod's volumes over their paths, sets the hostname,
drops privileges when asked, then execs the container's command. Its PID becomes the container's.

    python -m rectrain_local.node.launch LAUNCH_SPEC_JSON_FILE
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

from .pods import LaunchSpec

CLONE_NEWUTS = 0x04000000


def _mount(args: list[str]) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")


MS_BIND, MS_REC = 4096, 16384


def _bind_fd(fd: int, target: str) -> None:
    """Bind the directory an O_PATH descriptor holds. mount(8) would canonicalize /proc/self/fd/N back
    to the (now hidden) path name, so this calls mount(2) directly."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind {target} back over its volume: {os.strerror(ctypes.get_errno())}")


def runtime_paths() -> list[str]:
    """What the container's process runs from on this node (no image rootfs here): the project's
    environment, its base interpreter and, for an editable install, the source tree."""
    here = Path(__file__).resolve()
    candidates = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent), str(here.parents[3])}
    return sorted(path for path in candidates if Path(path).is_dir())


def apply_mounts(spec: LaunchSpec) -> None:
    """Mount each volume over its path. A volume mounted above the node's runtime (an emptyDir at /tmp
    while the environment lives below /tmp) would hide it: those runtime paths are opened first and
    bound back inside the new mount, as if they were part of the image."""
    keep = {path: os.open(path, os.O_PATH) for path in runtime_paths()}
    for mount in spec.mounts:
        target = Path(mount.target)
        if mount.source == "tmpfs":
            target.mkdir(parents=True, exist_ok=True)
            options = "mode=1777" + (f",size={_tmpfs_size(mount.tmpfs_size)}" if mount.tmpfs_size else "")
            _mount(["-t", "tmpfs", "-o", options, "tmpfs", str(target)])
        else:
            source = Path(mount.source)
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            _mount(["--bind", str(source), str(target)])
        for path, fd in keep.items():
            if path.startswith(str(target).rstrip("/") + "/"):
                Path(path).mkdir(parents=True, exist_ok=True)
                _bind_fd(fd, path)
        if mount.read_only:
            _mount(["-o", "remount,bind,ro", str(target)])
    for fd in keep.values():
        os.close(fd)


def _tmpfs_size(quantity: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g", "K": "k", "M": "m", "G": "g"}
    for suffix, unit in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    return quantity


def set_hostname(hostname: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) == 0:
        socket.sethostname(hostname[:63])


def drop_privileges(user: int | None, group: int | None) -> None:
    if user is None:
        return
    os.setgroups([])
    os.setgid(group if group is not None else user)
    os.setuid(user)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = LaunchSpec.from_json(Path(args[0]).read_text())
    try:
        apply_mounts(spec)
        set_hostname(spec.hostname)
        drop_privileges(spec.run_as_user, spec.run_as_group)
        workdir = spec.working_dir or spec.env.get("HOME") or "/"
        Path(workdir).mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
    except OSError as exc:
        print(f"rectrain-local node: cannot set up the container: {exc}", file=sys.stderr, flush=True)
        return 128
    try:
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except OSError as exc:
        print(f"rectrain-local node: cannot run {spec.argv[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
