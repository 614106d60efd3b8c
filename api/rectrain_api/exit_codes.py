"""The exit-code contract between a rank's process and the operator. One home for both sides:
the trainer (and any user script, see docs/operator.md) exits with these codes, and the operator's
lifecycle classifies a rank's exit with `classify_exit`.

| exit code         | meaning                                               | the operator                                     |
|-------------------|-------------------------------------------------------|--------------------------------------------------|
| 0                 | finished                                              | the rank succeeded                               |
| 2                 | invalid configuration (the message names the field)   | Failed at once (InvalidConfiguration), no retry  |
| 143 (128+SIGTERM) | stopped on SIGTERM, after checkpointing: "resume me"  | preemption, on spot or not; never counted against backoffLimit |
| other 128+N       | killed by signal N, 1-64 (SIGKILL, a crash)           | preemption on spot capacity, else failure        |
| any other code    | application failure                                   | failure: gang restart within backoffLimit        |

What a code cannot say is decided before it is read: a pod being deleted, evicted or disrupted is a
preemption whatever its code, and a container the kernel OOM-killed (reason OOMKilled, exit 137) is
a failure even on spot.

Pure Python, no dependencies: imported by the trainer, the operator and the reporting SDK.
"""

from __future__ import annotations

import signal
from typing import Literal

SUCCEEDED = 0
FAILED = 1  # the trainer's code for any other error; every code the table does not name means the same
INVALID_CONFIG = 2
PREEMPTED = 128 + signal.SIGTERM  # 143: what a shell reports for a SIGTERM-killed process, too
# Linux's highest signal number (SIGRTMAX): above 128 + 64 a code is no signal but the application's
# own choice, e.g. 255 from exit(-1).
MAX_SIGNAL = 64

ExitClass = Literal["succeeded", "invalid", "preempted", "failed"]


def signal_number(code: int) -> int | None:
    """N for an exit code 128+N (a process killed by signal N, as shells and container runtimes
    report it); None for any other code."""
    if 128 < code <= 128 + MAX_SIGNAL:
        return code - 128
    return None


def classify_exit(code: int, spot: bool) -> ExitClass:
    """What a rank's exit code means to the operator (see the table above)."""
    if code == SUCCEEDED:
        return "succeeded"
    if code == INVALID_CONFIG:
        return "invalid"
    if code == PREEMPTED:
        return "preempted"
    if spot and signal_number(code) is not None:
        return "preempted"
    return "failed"
