"""Running named steps: progress lines, per-step logs, and failures that say where to look."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence


class StepFailed(RuntimeError):
    """A step failed; the message names the step, the command and its log."""

    def __init__(self, step: str, command: Sequence[str] | str, log: Path | None, detail: str = "") -> None:
        cmd = command if isinstance(command, str) else " ".join(str(c) for c in command)
        lines = [f"step failed: {step}", f"  command: {cmd}"]
        if log is not None:
            lines.append(f"  log: {log}")
        if detail:
            lines.append(f"  {detail}")
        super().__init__("\n".join(lines))
        self.step = step
        self.log = log


def say(message: str) -> None:
    print(f"[rectrain-local] {message}", file=sys.stderr, flush=True)


def run_logged(
    step: str,
    command: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    heartbeat_seconds: float = 15.0,
) -> None:
    """Run `command`, appending its output to `log`; print a heartbeat with elapsed time while it runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise StepFailed(step, command, log, str(exc)) from exc
        done = threading.Event()

        def beat() -> None:
            while not done.wait(heartbeat_seconds):
                say(f"  {step}: still running ({time.monotonic() - started:.0f}s)")

        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
    if code != 0:
        raise StepFailed(step, command, log, f"exit code {code}; last lines:\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def is_root() -> bool:
    return os.geteuid() == 0
