"""How a rank pod failed, and what it counts against. The first matching rule wins:

  by the pod's state: deleted by someone else / being deleted, phase Unknown (node lost), a
      DisruptionTarget condition, pod reasons Evicted/Preempting/Shutdown/NodeShutdown/Terminated/
      NodeLost/UnexpectedAdmissionError/OutOf* -> preemption; OOMKilled -> failure (even on spot);
  then by the trainer's exit code (the contract in rectrain_api.exit_codes):
      2 (invalid configuration) -> the job fails at once (InvalidConfiguration): no retry can fix it;
      143 (stopped on SIGTERM, checkpointed) -> preemption, on spot or not;
      other 128+N (killed by a signal) -> preemption on spot, failure off spot;
      any other code -> failure.
Preemptions count in status.preemptions (maxPreemptions), failures in status.failures (backoffLimit).
A gang restarts after backoff_seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rectrain_api import exit_codes
from rectrain_api import job as api

from rectrain_operator.job_observation import PodView

# Container waiting reasons that never resolve by themselves: an application failure.
PERMANENT_WAITING_REASONS = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
PREEMPTION_REASONS = {
    "Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost", "UnexpectedAdmissionError",
    "DeletionByTaintManager", "EvictionByEvictionAPI", "PreemptionByScheduler", "PreemptionByKubeScheduler",
    "TerminationByKubelet", "DeletionByPodGC",
}
# Reason (lastFailure, Failed condition, Event) of a rank that exited with exit_codes.INVALID_CONFIG.
INVALID_CONFIGURATION = "InvalidConfiguration"


@dataclass(frozen=True)
class Failure:
    """How a rank failed: `cause` says what it counts against (maxPreemptions or backoffLimit)."""

    cause: Literal["preemption", "failure"]
    rank: int
    reason: str
    exit_code: int | None
    message: str
    retryable: bool = True  # False: no gang restart can help (an invalid configuration); the job fails at once


def classify(pod: PodView, spot: bool) -> Failure | None:
    """None when the pod is fine (pending, running, succeeded); else how it failed.

    What the pod's state says comes first (deleted, node lost, evicted, disrupted: a preemption whatever
    the exit code; OOMKilled: a failure even on spot); then the exit code, by rectrain_api.exit_codes.
    """
    if pod.phase == "Succeeded":
        return None

    def fail(cause: Literal["preemption", "failure"], reason: str, message: str) -> Failure:
        return Failure(cause, pod.rank, reason, pod.exit_code, message)

    if pod.deleting and (pod.disruption or pod.reason in PREEMPTION_REASONS):
        return fail("preemption", *_eviction(pod, spot))
    if pod.deleting:
        return fail("preemption", "PodDeleted", f"pod {pod.name} is being deleted by someone other than the operator")
    if pod.phase == "Unknown":
        return fail("preemption", "NodeLost", f"pod {pod.name} is in phase Unknown (node lost)")
    if pod.phase == "Pending" and pod.waiting_reason in PERMANENT_WAITING_REASONS:
        return fail("failure", pod.waiting_reason, f"rank {pod.rank} cannot start: {pod.waiting_reason}")
    if pod.phase != "Failed":
        return None
    if pod.disruption:
        return fail("preemption", pod.disruption, f"pod {pod.name} was disrupted ({pod.disruption}): {pod.message or ''}".strip())
    if pod.reason and (pod.reason in PREEMPTION_REASONS or pod.reason.startswith("OutOf")):
        return fail("preemption", pod.reason, f"pod {pod.name}: {pod.reason}: {pod.message or ''}".strip().rstrip(":"))
    if pod.container_reason == "OOMKilled":
        return fail("failure", "OOMKilled", f"rank {pod.rank} ran out of memory (exit {pod.exit_code})")
    if pod.exit_code is not None:
        return _classify_exit(pod, pod.exit_code, spot)
    return fail("failure", pod.reason or "PodFailed", f"pod {pod.name} failed: {pod.message or 'no exit code'}")


def _eviction(pod: PodView, spot: bool) -> tuple[str, str]:
    """(reason, message) of a rank pod being evicted: the DisruptionTarget condition (or pod reason) says
    who and why, e.g. TerminationByCloudProvider (a spot reclaim), EvictionByEvictionAPI (a drain),
    DeletionByTaintManager (a NoExecute taint), PreemptionByScheduler (a higher-priority pod)."""
    reason = pod.disruption or pod.reason or "Evicted"
    what = "spot capacity reclaimed" if spot and reason == "TerminationByCloudProvider" else "evicted"
    detail = pod.disruption_message or pod.message
    return reason, f"pod {pod.name} (rank {pod.rank}) {what}: {reason}{f': {detail}' if detail else ''}"


def _classify_exit(pod: PodView, code: int, spot: bool) -> Failure:
    """A failed pod's trainer exit code, read by the contract in rectrain_api.exit_codes."""
    meaning = exit_codes.classify_exit(code, spot)
    detail = f": {pod.message}" if pod.message else ""
    signal = exit_codes.signal_number(code)
    if meaning == "invalid":
        return Failure("failure", pod.rank, INVALID_CONFIGURATION, code,
                       f"rank {pod.rank} has an invalid configuration (exit {code}){detail}", retryable=False)
    if meaning == "preempted":
        # SIGTERM anywhere means "checkpointed, resume me"; another signal counts only on spot capacity.
        how = "stopped on SIGTERM" if code == exit_codes.PREEMPTED else f"was killed by signal {signal}"
        where = " on spot capacity" if spot else ""
        return Failure("preemption", pod.rank, "SpotReclaimed" if spot else "Terminated", code,
                       f"rank {pod.rank} {how}{where} (exit {code}){detail}")
    if signal is not None:  # a signal off spot: a crash (SIGSEGV, SIGABRT, a SIGKILL we did not ask for)
        return Failure("failure", pod.rank, pod.container_reason or "Signal", code,
                       f"rank {pod.rank} was killed by signal {signal} (exit {code}){detail}")
    # An application failure; also a trainer that exited 0 in a pod that failed anyway.
    return Failure("failure", pod.rank, pod.container_reason or "Error", code, f"rank {pod.rank} exited with code {code}{detail}")


def backoff_seconds(policy: api.RunPolicy, restarts_before: int) -> float:
    b = policy.restartBackoff
    return float(min(b.maxSeconds, b.initialSeconds * (2 ** min(restarts_before, 30))))
