"""Why a rank's log is not there: `kubectl rectrain logs` says it precisely, from the job's status.

The operator keeps pods this way (operator/rectrain_operator/lifecycle.py): the current attempt's pods
while the job lives; of the last failed attempt, the pods that ended by themselves (the failing rank's
among them) until the next attempt runs or runPolicy.keepFailedPodsSeconds passed; ranks still running
at a failure are stopped by deleting them (Kubernetes has no other way to stop a pod); every pod goes
ttlSecondsAfterFinished after the job finished.
"""

from __future__ import annotations

from typing import Any

DEFAULT_KEEP_FAILED_PODS_SECONDS = 600  # RunPolicy.keepFailedPodsSeconds's default


def missing_log_reason(job: dict[str, Any], rank: int, attempt: int | None) -> str:
    """Why no pod of `rank` in `attempt` (None: the newest) exists, in words."""
    status = job.get("status") or {}
    policy = (job.get("spec") or {}).get("runPolicy") or {}
    current = status.get("attempt")
    phase = status.get("phase") or "new"
    which = f"rank {rank} of attempt {attempt if attempt is not None else current}"
    if status.get("childrenDeletedTime"):
        return (f"{which}: deleted with the job's other pods at {status['childrenDeletedTime']} "
                f"(runPolicy.ttlSecondsAfterFinished={policy.get('ttlSecondsAfterFinished')})")
    if current is None or (attempt is not None and attempt > current):
        return f"{which}: that attempt has not started yet (the job is {phase}" + (
            f", at attempt {current})" if current is not None else ", no attempt yet)")
    if attempt is None or attempt == current:
        if phase == "Pending":
            return f"{which}: not created yet, or not yet admitted (the job is Pending)"
        if phase == "Suspended":
            return f"{which}: deleted when the job was suspended"
        if phase == "Failed":
            return f"{which}: it was still running when the job failed, so the operator stopped it by deleting it ({_failure_text(status)})"
        if phase == "Restarting":
            return f"{which}: stopped by the gang restart ({_failure_text(status)}); the operator keeps only pods that ended by themselves"
        return f"{which}: deleted by someone other than the operator ({_failure_text(status)})"
    return _earlier_attempt(status, policy, rank, attempt, current, which)


def _earlier_attempt(status: dict[str, Any], policy: dict[str, Any], rank: int, attempt: int, current: int,
                     which: str) -> str:
    keep = policy.get("keepFailedPodsSeconds", DEFAULT_KEEP_FAILED_PODS_SECONDS)
    if attempt < current - 1:
        return (f"{which}: deleted; the operator keeps only the last failed attempt's pods "
                f"(attempt {current - 1}), and those only until attempt {current} runs")
    last = status.get("lastFailure") or {}
    if keep == 0:
        return f"{which}: deleted with the gang restart (runPolicy.keepFailedPodsSeconds=0)"
    if last.get("rank") is not None and last.get("rank") != rank:
        return (f"{which}: it was still running when rank {last['rank']} failed, so the gang restart stopped it "
                f"by deleting it; the failing rank's pod is the one kept ({_failure_text(status)})")
    running = status.get("phase") in ("Running", "Succeeded")
    why = f"after its successor, attempt {current}, ran" if running else f"runPolicy.keepFailedPodsSeconds={keep} after the failure"
    return f"{which}: deleted {why}; its log's tail is in status.lastFailure.message ({_failure_text(status)})"


def _failure_text(status: dict[str, Any]) -> str:
    last = status.get("lastFailure") or {}
    if not last:
        return "no failure recorded"
    return f"last failure: rank {last.get('rank')} {last.get('reason')}: {last.get('message')}"
