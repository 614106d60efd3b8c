"""A failed gang: which rank failures there are, which one decides, what it counts against, and
the gang restart; and the failed attempt's ended pods kept for `kubectl logs` meanwhile."""

from __future__ import annotations

from datetime import datetime, timedelta

from rectrain_api import job as api
from rectrain_api.timestamps import fmt_time, parse_time

from rectrain_operator.conditions import clear_condition, set_condition
from rectrain_operator.failure_classification import Failure, backoff_seconds, classify
from rectrain_operator.job_actions import Action, Decision, DeletePods, Event
from rectrain_operator.job_observation import Gang, Observation, PodView
from rectrain_operator.job_status import JobStatusDraft, count_replicas
from rectrain_operator.requeue_delays import REQUEUE_SLACK_SECONDS, sooner


def rank_failures(gang: Gang, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> list[Failure]:
    failures = [f for f in (classify(p, spec.spot.enabled) for p in gang.current) if f is not None]
    if status.phase == "Running" and gang.missing:  # all ranks ran, so someone else deleted this pod
        rank = gang.missing[0]
        failures.append(Failure("preemption", rank, "PodDeleted", None,
                                f"rank {rank} pod was deleted by someone other than the operator"))
    return failures


def deciding_failure(failures: list[Failure]) -> Failure:
    """The failure that decides for the gang: an invalid configuration first (no retry fixes it), then a
    preemption (the other ranks usually died of the lost peer; a pod seen failing before a pod found
    missing, as it says more), then the application failure of the lowest rank."""
    invalid = [f for f in failures if not f.retryable]
    if invalid:
        return min(invalid, key=lambda f: f.rank)
    preemption = next((f for f in failures if f.cause == "preemption"), None)
    return preemption or min(failures, key=lambda f: f.rank)


def record_failure(status: JobStatusDraft, failure: Failure, now: datetime) -> None:
    status.lastFailure = api.LastFailure(cause=failure.cause, rank=failure.rank, reason=failure.reason,
                                         exitCode=failure.exit_code, message=failure.message, time=fmt_time(now))
    if failure.cause == "preemption":
        status.preemptions += 1
    else:
        status.failures += 1


def limit_exceeded(status: JobStatusDraft, policy: api.RunPolicy, last: Failure) -> tuple[str, str] | None:
    """(reason, message) when the counted failure or preemption is one too many."""
    if last.cause == "preemption":
        if policy.maxPreemptions is not None and status.preemptions > policy.maxPreemptions:
            return ("PreemptionLimitExceeded",
                    f"{status.preemptions} preemptions exceed maxPreemptions={policy.maxPreemptions}; last: {last.message}")
        return None
    if status.failures > policy.backoffLimit:
        return ("BackoffLimitExceeded",
                f"{status.failures} application failures exceed backoffLimit={policy.backoffLimit}; last: {last.message}")
    return None


def restart_gang(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, first: Failure, gang: Gang) -> Decision:
    """Phase Restarting: delete every rank pod now, create attempt + 1 after the backoff (see lifecycle._restarting)."""
    now = obs.now
    delay = backoff_seconds(spec.runPolicy, status.restarts)
    status.restarts += 1
    status.phase, status.restartAfter = "Restarting", fmt_time(now + timedelta(seconds=delay))
    reason = "Preempted" if first.cause == "preemption" else "ApplicationFailed"
    message = f"{first.message}; restarting all {gang.replicas} ranks in {delay:g}s (restart {status.restarts})"
    status.conditions = set_condition(status.conditions, "Restarting", True, reason, message, now)
    status.conditions = clear_condition(status.conditions, "Running", reason, first.message, now)
    count_replicas(status, gang.current, spec)
    kept = kept_pods(obs, status, spec)
    live = tuple(p.name for p in gang.current + gang.stale if not p.deleting and p.name not in kept)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Warning", reason, message))
    return Decision(actions=actions, requeue_after=max(delay, 0.0) + REQUEUE_SLACK_SECONDS, spec=spec,
                    restart_cause=first.cause)


def _ended(pod: PodView) -> bool:
    return pod.phase in ("Succeeded", "Failed") and not pod.deleting


def _keep_until(status: JobStatusDraft, spec: api.RecTrainJobSpec) -> datetime | None:
    """Until when the last failed attempt's ended pods are kept (runPolicy.keepFailedPodsSeconds after the failure)."""
    failed_at = parse_time(status.lastFailure.time) if status.lastFailure else None
    if failed_at is None or spec.runPolicy.keepFailedPodsSeconds <= 0:
        return None
    return failed_at + timedelta(seconds=spec.runPolicy.keepFailedPodsSeconds)


def kept_pods(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, attempt: int | None = None) -> set[str]:
    """The names of the failed attempt's pods kept for `kubectl logs`: those that ended by themselves (the
    failing rank's among them; a running pod can only be stopped by deleting it), until the limit.
    `attempt`: the failed attempt (default: the current one, at the failure and while Restarting)."""
    until = _keep_until(status, spec)
    if until is None or obs.now >= until:
        return set()
    attempt = status.attempt if attempt is None else attempt
    return {p.name for p in obs.pods if p.attempt == attempt and _ended(p)}


def keep_requeue(d: Decision, status: JobStatusDraft, spec: api.RecTrainJobSpec, kept: set[str], now: datetime) -> None:
    """Look again when the kept pods' time is up (no pod event comes then)."""
    until = _keep_until(status, spec)
    if kept and until is not None:
        d.requeue_after = sooner(d.requeue_after, max(0.0, (until - now).total_seconds()) + REQUEUE_SLACK_SECONDS)
