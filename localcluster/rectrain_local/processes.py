"""Starting and stopping background processes recorded by PID and start time.

A PID alone can be reused by the kernel; pairing it with the process start time (from /proc) means
`down` only ever signals the processes this tool started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which `pid` started, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after the closing paren are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: int

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "startTime": self.start_time}

    @classmethod
    def from_json(cls, data: dict) -> "ProcessRecord":
        return cls(name=data["name"], pid=int(data["pid"]), start_time=int(data["startTime"]))


def spawn(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None, *, header: bool = True
) -> ProcessRecord:
    """Start `argv` detached from this process (own session), output appended to `log`.

    With `header`, a plain-text `==== <time> $ <argv>` line comes first. With header=False nothing of
    this function's own goes in (for a log that must hold only what the process writes, such as the node
    agent's JSON lines) beyond ending a line a previous run left unfinished.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        if header:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n".encode())
        elif _ends_mid_line(log):
            out.write(b"\n")
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
        )
    start = process_start_time(proc.pid)
    if start is None:
        code = proc.wait()
        raise RuntimeError(f"{name} exited at once with code {code}; see {log}")
    return ProcessRecord(name=name, pid=proc.pid, start_time=start)


def _ends_mid_line(path: Path) -> bool:
    """Whether `path` ends with a line that has no newline yet (a process killed while writing it)."""
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def stop(record: ProcessRecord, grace_seconds: float = 10.0) -> None:
    """SIGTERM, wait up to the grace period, then SIGKILL; reaps the process if it is our child."""
    if not record.alive():
        return
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            return
        time.sleep(0.05)
    try:
        os.kill(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while record.alive() and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
