"""The RecTrainJob lifecycle: a pure state machine.

    decide(Observation) -> Decision

An Observation is what the cluster says right now (the job's spec and operator-owned status, its
rank pods, the time). A Decision is the next operator-owned status (as a merge patch), the actions to
take (create / delete children, post events) and when to look again. Nothing here calls the API, so
every transition is table-tested with plain values.

Phases:  (new) -> Pending -> Running -> Succeeded
                    |  ^        |
                    |  +--------+--> Restarting -> Pending (attempt + 1)   [any rank failed]
                    +--> Failed (InvalidSpec, InvalidConfiguration, BackoffLimitExceeded,
                                 PreemptionLimitExceeded, DeadlineExceeded)
         any active phase <-> Suspended (spec.runPolicy.suspend)

Each phase has one handler in `_PHASES`; the terminal phases (Succeeded, Failed) share `_finished`.
Every handler works on a typed copy of the operator's status (`JobStatusDraft`), and `decide` turns
the difference from what the API holds into the merge patch.

When a rank fails, failure_classification says how (a preemption or a failure, retryable or not);
when several ranks fail at once, an invalid configuration wins (it is no side effect of a lost peer),
then a preemption (the others usually died of the lost peer), then the lowest rank (gang_failures).

This module holds decide, the phase handlers and the transitions between phases; the rest lives in:
  job_observation        the inputs: Observation, PodView (pod_view), Gang
  job_actions            the outputs: Decision and its actions (EnsureChildren, CreatePods, Event, ...)
  job_spec               the spec, read strictly (everything wrong with it) or leniently (a finished job)
  job_status             the working copy of the status (JobStatusDraft), its merge patch, its counts
  conditions             set / clear / read a condition; the status headline
  scheduling_conditions  GangScheduled and Unschedulable
  failure_classification how a rank pod failed (classify), the restart backoff
  gang_failures          the deciding failure, its limits, the gang restart, the pods kept for their logs
  elastic_lifecycle      an elastic gang's shrink and growth, its capacity probes
  rendezvous_watchdog    a Running attempt that never reports a training step (Stalled)
  requeue_delays         when to look again (deadline, TTL)
  foreign_checkpoint     a run resumed from another job's checkpoint (CheckpointFromAnotherJob)
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from rectrain_api import job as api
from rectrain_api.timestamps import fmt_time, parse_time

from rectrain_operator.conditions import clear_condition, headline, set_condition
from rectrain_operator.elastic_lifecycle import elastic_resize, elastic_settle_requeue, probe_actions
from rectrain_operator.failure_classification import Failure
from rectrain_operator.foreign_checkpoint import foreign_checkpoint
from rectrain_operator.gang_failures import (
    deciding_failure, keep_requeue, kept_pods, limit_exceeded, rank_failures, record_failure, restart_gang,
)
from rectrain_operator.job_actions import (
    Action, CreatePods, CreateProbes, Decision, DeleteChildren, DeletePods, EnsureChildren, Event,
)
from rectrain_operator.job_observation import Gang, Observation, PodView, pod_view
from rectrain_operator.job_spec import lenient_spec, parse_spec
from rectrain_operator.job_status import JobStatusDraft, count_replicas, gang_size, owned_fields, read_status, status_patch
from rectrain_operator.rendezvous_watchdog import STALLED, rendezvous_timeout, watch_rendezvous
from rectrain_operator.requeue_delays import REQUEUE_SLACK_SECONDS, deadline_requeue, sooner, ttl_requeue
from rectrain_operator.scheduling_conditions import gang_condition, placement_condition

# decide() and the types it reads and returns, so that callers (the table tests) need only this module.
__all__ = [
    "decide", "Observation", "PodView", "pod_view", "Decision", "Action",
    "EnsureChildren", "CreatePods", "CreateProbes", "DeletePods", "DeleteChildren", "Event",
]

# Pods still terminating this long after their grace period are force-deleted (node gone).
FORCE_DELETE_AFTER_SECONDS = 60.0
TERMINAL_PHASES = ("Succeeded", "Failed")


# ------------------------------------------------------------------------------------ decide


def decide(obs: Observation) -> Decision:
    current = owned_fields(obs.status)
    status = read_status(current)  # a fresh copy: the handlers change it, never obs.status
    d = _decide(obs, status)
    d.actions += probe_actions(obs, status, d.spec)
    gang_condition(obs, status, d.spec)
    d.actions += foreign_checkpoint(obs, status, d.spec)
    status.reason, status.message = headline(status.conditions, status.phase)
    d.status = status_patch(current, status)
    return d


PhaseHandler = Callable[[Observation, JobStatusDraft, api.RecTrainJobSpec], Decision]


def _decide(obs: Observation, status: JobStatusDraft) -> Decision:
    if status.phase in TERMINAL_PHASES:
        return _finished(obs, status)  # a finished job keeps its outcome, whatever its spec says now
    spec, errors = parse_spec(obs)
    if spec is None or errors:
        return _invalid_spec(obs, status, spec, errors)
    status.observedGeneration = obs.generation
    status.desiredReplicas = spec.desired_replicas
    return _PHASES[status.phase](obs, status, spec)


# ------------------------------------------------------------------------------ phase handlers


def _new(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision:
    """No phase yet: create the gang (attempt 0), or start out suspended."""
    if spec.runPolicy.suspend:
        return _suspend(obs, status, spec, created=True)
    status.startTime = fmt_time(obs.now)
    status.conditions = set_condition(status.conditions, "Created", True, "PodsCreated",
                                      f"created {spec.desired_replicas} rank pods", obs.now)
    event = Event("Normal", "Created", f"creating {spec.desired_replicas} rank pods (world size {spec.world_size})")
    return _start_attempt(obs, status, spec, 0, event, created=True)


def _active(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision:
    """Pending / Running: watch the current gang until all of it runs, finishes, or a rank fails."""
    interrupted = _interruption(obs, status, spec)
    if interrupted is not None:
        return interrupted
    size = gang_size(status, spec)
    if status.replicas is not None and status.replicas != size:
        return _resize(obs, status, spec)
    gang = Gang.observe(obs.pods, status.attempt, size)
    failures = rank_failures(gang, status, spec)
    stall = None if failures else watch_rendezvous(obs, status, spec, gang)
    if isinstance(stall, Failure):
        d = _gang_failure(obs, status, spec, [stall], gang)
        d.actions.insert(0, Event("Warning", STALLED, stall.message))
        return d
    if failures:
        return _gang_failure(obs, status, spec, failures, gang)
    resized = elastic_resize(obs, status, spec, gang)
    if resized is not None:
        return resized
    count_replicas(status, gang.current, spec)
    placement_condition(obs, status, gang)
    kept = set() if gang.all_up or gang.all_succeeded else kept_pods(obs, status, spec, attempt=status.attempt - 1)
    d = Decision(actions=_tidy_up(gang, status.attempt, kept), spec=spec)
    if gang.all_succeeded:
        return _succeed(obs, status, gang, d)
    if gang.all_up and status.phase != "Running":
        _mark_running(obs, status, gang, d)
        if rendezvous_timeout(spec) > 0:  # the watchdog's first look
            stall = float(rendezvous_timeout(spec)) + REQUEUE_SLACK_SECONDS
    d.requeue_after = elastic_settle_requeue(obs, status, spec, gang)
    deadline_requeue(d, spec, status, obs.now)
    keep_requeue(d, status, spec, kept, obs.now)
    if isinstance(stall, float):
        d.requeue_after = sooner(d.requeue_after, stall)
    return d


def _restarting(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision:
    """Restarting: once the old gang is gone and the backoff has passed, create attempt + 1."""
    interrupted = _interruption(obs, status, spec)
    if interrupted is not None:
        return interrupted
    count_replicas(status, [], spec)
    # Wait until the old gang is gone (its hostnames are reused, its room too); the failed attempt's
    # pods that ended by themselves hold neither and are kept (for their logs) until the next attempt runs.
    kept = kept_pods(obs, status, spec)
    if any(p.name not in kept for p in obs.pods) or obs.probes:
        return _await_deletion(obs, spec, keep=kept)
    after = parse_time(status.restartAfter) or obs.now
    if obs.now < after:
        return Decision(spec=spec, requeue_after=(after - obs.now).total_seconds() + REQUEUE_SLACK_SECONDS)
    attempt = status.attempt + 1
    event = Event("Normal", "Restarted", f"creating {gang_size(status, spec)} rank pods (attempt {attempt})")
    d = _start_attempt(obs, status, spec, attempt, event)
    keep_requeue(d, status, spec, kept, obs.now)
    return d


def _suspended(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision:
    """Suspended (by a user or Kueue): once unsuspended and the old gang is gone, create attempt + 1."""
    if spec.runPolicy.suspend:
        return _suspend(obs, status, spec)
    if obs.pods or obs.probes:  # wait until the old gang is gone (its hostnames are reused)
        return _await_deletion(obs, spec)
    attempt = status.attempt + 1
    status.startTime = fmt_time(obs.now)  # resuming restarts the activeDeadlineSeconds clock
    status.replicas = spec.desired_replicas  # an elastic job tries its full size again
    status.conditions = set_condition(status.conditions, "Suspended", False, "Resumed", "job resumed", obs.now)
    event = Event("Normal", "Resumed", f"resumed: creating {spec.desired_replicas} rank pods (attempt {attempt})")
    return _start_attempt(obs, status, spec, attempt, event)


def _finished(obs: Observation, status: JobStatusDraft) -> Decision:
    """Succeeded / Failed: delete what still runs of a failed job; after ttlSecondsAfterFinished, every child."""
    spec = lenient_spec(obs)
    actions: list[Action] = []
    if status.phase == "Failed":
        live = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed") and not p.deleting)
        if live:
            actions.append(DeletePods(live))
    d = Decision(actions=actions, spec=spec)
    ttl = spec.runPolicy.ttlSecondsAfterFinished if spec else None
    if ttl is None or status.childrenDeletedTime:
        return d
    done = parse_time(status.completionTime) or obs.now
    if (obs.now - done).total_seconds() < ttl:
        ttl_requeue(d, spec, status, obs.now)
        return d
    status.childrenDeletedTime = fmt_time(obs.now)
    d.actions.append(DeleteChildren())
    d.actions.append(Event("Normal", "ChildrenDeleted", f"ttlSecondsAfterFinished={ttl}: deleted pods, Service and RBAC"))
    return d


_PHASES: dict[str | None, PhaseHandler] = {
    None: _new,
    "Pending": _active,
    "Running": _active,
    "Restarting": _restarting,
    "Suspended": _suspended,
    # "Succeeded" and "Failed" (TERMINAL_PHASES) go to _finished, whatever the spec.
}


# ------------------------------------------------------------------------------- transitions


def _start_attempt(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, attempt: int, event: Event,
                   created: bool = False) -> Decision:
    """Phase Pending with a whole new gang: attempt `attempt`, every rank."""
    size = gang_size(status, spec)
    status.phase, status.attempt, status.restartAfter, status.replicas = "Pending", attempt, None, size
    count_replicas(status, [], spec)
    d = Decision(actions=[EnsureChildren(), CreatePods(attempt, tuple(range(size)), size), event],
                 spec=spec, created=created)
    deadline_requeue(d, spec, status, obs.now)
    return d


def _interruption(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision | None:
    """What stops an active job whatever its pods do: suspension, then activeDeadlineSeconds."""
    policy = spec.runPolicy
    if policy.suspend:
        return _suspend(obs, status, spec)
    start = parse_time(status.startTime)
    if policy.activeDeadlineSeconds is not None and start is not None:
        if (obs.now - start).total_seconds() >= policy.activeDeadlineSeconds:
            return _fail(obs, status, spec, "DeadlineExceeded",
                         f"job was active longer than activeDeadlineSeconds={policy.activeDeadlineSeconds}")
    return None


def _suspend(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, created: bool = False) -> Decision:
    """Delete the pods; not a failure."""
    live = tuple(p.name for p in obs.pods if not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    if status.phase != "Suspended":
        now = obs.now
        status.phase, status.restartAfter = "Suspended", None
        status.conditions = set_condition(status.conditions, "Suspended", True, "Suspended",
                                          "spec.runPolicy.suspend is true", now)
        status.conditions = clear_condition(status.conditions, "Running", "Suspended", "job suspended", now)
        actions.append(Event("Normal", "Suspended", f"suspended: deleting {len(live)} rank pods"))
    count_replicas(status, [], spec)
    return Decision(actions=actions, spec=spec, created=created)


def _resize(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec) -> Decision:
    """spec.replicas (or spec.elastic) changed: restart the gang at the new size (neither a failure
    nor a preemption)."""
    now = obs.now
    field_name = "spec.elastic" if spec.elastic else "spec.replicas"
    message = f"{field_name} changed the size from {status.replicas} to {gang_size(status, spec)}: restarting the gang"
    status.phase, status.restartAfter = "Restarting", fmt_time(now)
    status.conditions = set_condition(status.conditions, "Restarting", True, "SpecChanged", message, now)
    status.conditions = clear_condition(status.conditions, "Running", "SpecChanged", message, now)
    live = tuple(p.name for p in obs.pods if not p.deleting)
    count_replicas(status, [], spec)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Normal", "SpecChanged", message))
    return Decision(actions=actions, spec=spec, requeue_after=REQUEUE_SLACK_SECONDS)


def _succeed(obs: Observation, status: JobStatusDraft, gang: Gang, d: Decision) -> Decision:
    """Every rank of the current attempt exited 0."""
    now, n = obs.now, gang.replicas
    if not status.firstRunningTime:
        # The whole gang ran and finished between two looks: the ranks' own start times say when.
        _first_running(d, status, obs, max((p.started_at or now for p in gang.current), default=now))
    status.phase, status.completionTime = "Succeeded", fmt_time(now)
    status.conditions = set_condition(status.conditions, "Running", False, "Succeeded", "all ranks finished", now)
    status.conditions = set_condition(status.conditions, "Succeeded", True, "AllRanksSucceeded", f"all {n} ranks exited 0", now)
    d.actions.append(Event("Normal", "Succeeded", f"all {n} ranks exited 0"))
    d.finished = "succeeded"
    ttl_requeue(d, d.spec, status, now)
    return d


def _mark_running(obs: Observation, status: JobStatusDraft, gang: Gang, d: Decision) -> None:
    """Every rank of the current attempt runs (or already finished): phase Running."""
    now, n, attempt = obs.now, gang.replicas, status.attempt
    status.phase = "Running"
    status.conditions = set_condition(status.conditions, "Running", True, "AllRanksRunning",
                                      f"all {n} ranks running (attempt {attempt})", now)
    status.conditions = clear_condition(status.conditions, "Restarting", "Recovered", "gang restarted", now)
    d.actions.append(Event("Normal", "Running", f"all {n} ranks running (attempt {attempt})"))
    if not status.firstRunningTime:
        _first_running(d, status, obs, now)


def _first_running(d: Decision, status: JobStatusDraft, obs: Observation, when: datetime) -> None:
    """Record the moment all ranks first ran (never before the job became active, never in the future)."""
    start = parse_time(status.startTime) or obs.created
    when = min(max(when, start), obs.now) if start is not None else min(when, obs.now)
    status.firstRunningTime = fmt_time(when)
    if obs.created is not None:
        d.time_to_running = max(0.0, (when - obs.created).total_seconds())


def _fail(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, reason: str, message: str) -> Decision:
    """Phase Failed: delete the ranks still running, then wait for the TTL."""
    now = obs.now
    status.phase, status.completionTime, status.restartAfter = "Failed", fmt_time(now), None
    status.conditions = set_condition(status.conditions, "Failed", True, reason, message, now)
    status.conditions = clear_condition(status.conditions, "Running", reason, message, now)
    status.conditions = clear_condition(status.conditions, "Restarting", reason, message, now)
    live = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed") and not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Warning", reason, message))
    count_replicas(status, [p for p in obs.pods if p.attempt == status.attempt], spec)
    d = Decision(actions=actions, spec=spec, finished="failed")
    ttl_requeue(d, spec, status, now)
    return d


def _invalid_spec(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec | None, errors: list[str]) -> Decision:
    """Phase Failed (InvalidSpec) before any pod runs: what the schema cannot check, or a refused child."""
    now = obs.now
    message = "; ".join(errors) or "spec: invalid"
    status.phase, status.completionTime, status.restartAfter = "Failed", fmt_time(now), None
    status.observedGeneration = obs.generation
    status.conditions = set_condition(status.conditions, "Failed", True, "InvalidSpec", message, now)
    pods = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed"))
    actions: list[Action] = [DeletePods(pods)] if pods else []
    actions.append(Event("Warning", "InvalidSpec", message))
    d = Decision(actions=actions, finished="failed")
    ttl_requeue(d, spec, status, now)
    return d


def _await_deletion(obs: Observation, spec: api.RecTrainJobSpec, keep: set[str] | frozenset[str] = frozenset()) -> Decision:
    """Keep deleting the old gang (but the pods in `keep`); force-delete pods stuck terminating (their node is gone)."""
    live = tuple(p.name for p in [*obs.pods, *obs.probes] if not p.deleting and p.name not in keep)
    stuck = tuple(
        p.name for p in obs.pods
        if p.deleting and p.deleted_at is not None and (obs.now - p.deleted_at).total_seconds() > FORCE_DELETE_AFTER_SECONDS
    )
    actions: list[Action] = [DeletePods(live)] if live else []
    if stuck:
        actions.append(DeletePods(stuck, force=True))
        actions.append(Event("Warning", "ForceDeleted", f"force-deleted pods stuck terminating: {', '.join(stuck)}"))
    return Decision(actions=actions, spec=spec, requeue_after=1.0)


def _gang_failure(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, failures: list[Failure],
                  gang: Gang) -> Decision:
    """A rank failed: record it, then fail the job (no retry can help, or a limit is exceeded) or restart the gang."""
    first = deciding_failure(failures)
    record_failure(status, first, obs.now)
    if not first.retryable:
        return _fail(obs, status, spec, first.reason, first.message)
    exceeded = limit_exceeded(status, spec.runPolicy, first)
    if exceeded is not None:
        return _fail(obs, status, spec, *exceeded)
    return restart_gang(obs, status, spec, first, gang)


# ----------------------------------------------------------------------------------- helpers


def _tidy_up(gang: Gang, attempt: int, keep: set[str]) -> list[Action]:
    """Delete pods of earlier attempts (but the kept ones); (re)create missing ranks of this one (AlreadyExists is fine)."""
    actions: list[Action] = []
    stale = tuple(p.name for p in gang.stale if not p.deleting and p.name not in keep)
    if stale:
        actions.append(DeletePods(stale))
    if gang.missing:
        actions += [EnsureChildren(), CreatePods(attempt, tuple(gang.missing), gang.replicas)]
    return actions
