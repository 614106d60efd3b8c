"""`rectrain-launch COMMAND [ARGS...]`: run one rank process per GPU (or per `procsPerReplica` on
CPU) in a pod, with torch's own launcher (torch.distributed.run, i.e. torchrun).

The operator makes this the command of every pod that holds more than one rank. torchrun reads the
PET_* environment the operator sets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR, PET_MASTER_PORT), starts the local ranks with RANK/LOCAL_RANK/WORLD_SIZE, and
supervises them. This wrapper only adds the pod's contract on top (see rectrain_api.exit_codes):

- SIGTERM reaches every local rank (torchrun forwards it); the ranks checkpoint together and the
  pod exits 143, the code for "preempted, resume me".
- A local rank that crashes ends the pod with *that rank's* exit code (torchrun itself exits 1),
  and the last log line names the global rank, so the job's lastFailure message does too.
- Every local rank's output reaches the container log, each line prefixed with `[rank<global>]:`.
- No restarts inside the pod: the operator restarts the whole gang from its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys

from rectrain_api.exit_codes import INVALID_CONFIG, PREEMPTED

# Leave the ranks most of the pod's 30 s grace period to finish the step and checkpoint.
SHUTDOWN_TIMEOUT_SECONDS = "25"
LOG_LINE_PREFIX = "[rank${rank}]:"


def torchrun_args(command: list[str]) -> list[str]:
    """torchrun's arguments for `command`; everything else comes from the pod's PET_* variables."""
    return ["--max-restarts", "0", "--tee", "3", "--no-python", *command]


def exit_code(process_exitcode: int) -> int:
    """A shell-style exit code: a process killed by signal N (exitcode -N) becomes 128+N."""
    return 128 - process_exitcode if process_exitcode < 0 else process_exitcode


def main(argv: list[str] | None = None) -> int:
    command = sys.argv[1:] if argv is None else argv
    if not command:
        print("usage: rectrain-launch COMMAND [ARGS...]  (torchrun settings come from PET_* variables)", file=sys.stderr)
        return INVALID_CONFIG
    os.environ.setdefault("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", LOG_LINE_PREFIX)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_SECONDS)

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(torchrun_args(command)))
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        code = exit_code(failure.exitcode)
        print(f"rectrain-launch: global rank {rank} (local rank {failure.local_rank}) exited with code {code}",
              file=sys.stderr, flush=True)
        return code
    except SignalException as stopped:
        # torchrun has passed the signal on to every local rank and waited for them to checkpoint.
        code = PREEMPTED if stopped.sigval == signal.SIGTERM else 128 + int(stopped.sigval)
        print(f"rectrain-launch: stopped by {signal.Signals(stopped.sigval).name}; exiting with {code}",
              file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
