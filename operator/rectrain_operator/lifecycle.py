"""The RecTrainJob lifecycle: a pure state machine.

    decide(Observation) -> Decision

An Observation is what the cluster says right now (the job's spec and operator-owned status, its
rank pods, the time). A Decision is the next operator-owned status, the actions to take (create /
delete children, post events) and when to look again. Nothing here calls the API, so every
transition is table-tested with plain values.

Phases:  (new) -> Pending -> Running -> Succeeded
                    |  ^        |
                    |  +--------+--> Restarting -> Pending (attempt + 1)   [any rank failed]
                    +--> Failed (InvalidSpec, BackoffLimitExceeded, PreemptionLimitExceeded, DeadlineExceeded)
         any active phase <-> Suspended (spec.runPolicy.suspend)

Failure classification (the first matching rule wins; preemptions never consume backoffLimit):
  preemption: pod deleted by someone else / being deleted, phase Unknown (node lost), a
              DisruptionTarget condition, pod reasons Evicted/Preempting/Shutdown/NodeShutdown/
              Terminated/NodeLost/UnexpectedAdmissionError/OutOf*, or a signal exit (128+) on spot.
  failure:    OOMKilled, exit codes 1-127, signal exits off spot, anything else.
When several ranks fail at once, a preemption wins (the others usually died of the lost peer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from rectrain_api import job as api

from rectrain_operator import builders

# Container waiting reasons that never resolve by themselves: an application failure.
PERMANENT_WAITING_REASONS = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
# Pods still terminating this long after their grace period are force-deleted (node gone).
FORCE_DELETE_AFTER_SECONDS = 60.0

PREEMPTION_REASONS = {
    "Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost", "UnexpectedAdmissionError",
    "DeletionByTaintManager", "EvictionByEvictionAPI", "PreemptionByScheduler", "PreemptionByKubeScheduler",
    "TerminationByKubelet", "DeletionByPodGC",
}


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PodView:
    """What the lifecycle needs to know about one rank pod."""

    name: str
    rank: int
    attempt: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    deleting: bool = False
    reason: str | None = None  # pod.status.reason (e.g. Evicted)
    message: str | None = None
    exit_code: int | None = None  # trainer container's terminated exit code
    container_reason: str | None = None  # e.g. Error, OOMKilled, Completed
    disruption: str | None = None  # reason of a DisruptionTarget=True condition
    waiting_reason: str | None = None  # trainer container's waiting reason (e.g. InvalidImageName)
    deleted_at: datetime | None = None  # metadata.deletionTimestamp (when the grace period ends)
    started_at: datetime | None = None  # when the trainer container started (running or terminated state)


def pod_view(pod: dict[str, Any]) -> PodView | None:
    """Extract a PodView from a Pod manifest; None when it is not a rank pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        rank = int(labels[api.LABEL_RANK])
        attempt = int(labels[api.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    exit_code = container_reason = container_message = waiting_reason = started_at = None
    statuses = status.get("containerStatuses") or []
    statuses = sorted(statuses, key=lambda c: c.get("name") != builders.CONTAINER_NAME)
    for c in statuses:
        state = c.get("state") or {}
        started_at = started_at or parse_time((state.get("running") or state.get("terminated") or {}).get("startedAt"))
        term = state.get("terminated") or (c.get("lastState") or {}).get("terminated")
        if term:
            exit_code = term.get("exitCode")
            container_reason = term.get("reason")
            container_message = term.get("message")
            break
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting_reason is None:
            waiting_reason = waiting.get("reason")
    disruption = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = cond.get("reason") or "DisruptionTarget"
    return PodView(
        name=meta.get("name", ""),
        rank=rank,
        attempt=attempt,
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        reason=status.get("reason"),
        message=status.get("message") or _last_lines(container_message),
        exit_code=exit_code,
        container_reason=container_reason,
        disruption=disruption,
        waiting_reason=waiting_reason,
        deleted_at=parse_time(meta.get("deletionTimestamp")),
        started_at=started_at,
    )


@dataclass(frozen=True)
class Observation:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]  # raw spec (parsed here so a bad spec becomes InvalidSpec, not a crash)
    status: dict[str, Any]  # raw status (the operator reads only its own fields)
    pods: list[PodView]
    now: datetime
    created: datetime | None = None  # metadata.creationTimestamp
    rejected: str | None = None  # the API server refused a child as invalid (e.g. a bad pod volume)


# ----------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class EnsureChildren:
    """Create the headless Service and the trainer ServiceAccount/Role/RoleBinding if missing."""


@dataclass(frozen=True)
class CreatePods:
    attempt: int
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class DeletePods:
    names: tuple[str, ...]
    force: bool = False  # grace period 0: for pods stuck terminating (their node is gone)


@dataclass(frozen=True)
class DeleteChildren:
    """Delete every child (pods, Service, RBAC): ttlSecondsAfterFinished."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = EnsureChildren | CreatePods | DeletePods | DeleteChildren | Event


@dataclass
class Decision:
    status: dict[str, Any] | None  # operator-owned status fields to write (None: unchanged)
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None
    spec: api.RecTrainJobSpec | None = None
    # For metrics: what happened in this step.
    created: bool = False
    finished: str | None = None  # "succeeded" | "failed"
    restart_cause: str | None = None  # "preemption" | "failure"
    time_to_running: float | None = None


# ----------------------------------------------------------------------------------- helpers


def fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API (second precision or finer); None when absent or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions]
    for c in out:
        if c.get("type") == type_:
            if c.get("status") != value:
                c["lastTransitionTime"] = fmt_time(now)
            c.update(status=value, reason=reason, message=message)
            return out
    out.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": fmt_time(now)})
    return out


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


@dataclass(frozen=True)
class Failure:
    cause: Literal["preemption", "failure"]
    rank: int
    reason: str
    exit_code: int | None
    message: str


def _last_lines(text: str | None, lines: int = 3, limit: int = 600) -> str | None:
    """The end of a container's termination message (with FallbackToLogsOnError, its log's tail)."""
    if not text:
        return None
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:]


def classify(pod: PodView, spot: bool) -> Failure | None:
    """None when the pod is fine (pending, running, succeeded); else how it failed."""
    if pod.phase == "Succeeded":
        return None

    def fail(cause: Literal["preemption", "failure"], reason: str, message: str) -> Failure:
        return Failure(cause, pod.rank, reason, pod.exit_code, message)

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
    code = pod.exit_code
    if pod.container_reason == "OOMKilled":
        return fail("failure", "OOMKilled", f"rank {pod.rank} ran out of memory (exit {code})")
    if code is not None and code >= 128:
        signal = code - 128
        if spot:
            return fail("preemption", "SpotReclaimed", f"rank {pod.rank} was killed by signal {signal} on spot capacity")
        return fail("failure", pod.container_reason or "Signal", f"rank {pod.rank} was killed by signal {signal} (exit {code})")
    if code is not None:
        detail = f": {pod.message}" if pod.message else ""
        return fail("failure", pod.container_reason or "Error", f"rank {pod.rank} exited with code {code}{detail}")
    return fail("failure", pod.reason or "PodFailed", f"pod {pod.name} failed: {pod.message or 'no exit code'}")


def backoff_seconds(policy: api.RunPolicy, restarts_before: int) -> float:
    b = policy.restartBackoff
    return float(min(b.maxSeconds, b.initialSeconds * (2 ** min(restarts_before, 30))))


# ------------------------------------------------------------------------------------ decide


OPERATOR_DEFAULTS: dict[str, Any] = {"attempt": 0, "restarts": 0, "failures": 0, "preemptions": 0, "conditions": []}


def decide(obs: Observation) -> Decision:
    old = {k: v for k, v in obs.status.items() if k in api.OPERATOR_STATUS_FIELDS}
    st: dict[str, Any] = {**OPERATOR_DEFAULTS, **{k: v for k, v in old.items() if v is not None}}
    st["conditions"] = [dict(c) for c in st.get("conditions") or []]
    d = _decide(obs, st)
    d.status = _changed(old, d.status)
    return d


def _changed(old: dict[str, Any], new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The merge patch from old to new (None: nothing to write)."""
    if new is None:
        return None
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new and old[k] is not None:
            patch[k] = None
    return patch or None


def _decide(obs: Observation, st: dict[str, Any]) -> Decision:
    now = obs.now
    phase = st.get("phase")
    ref = builders.JobRef(obs.name, obs.namespace, obs.uid)

    # Terminal phases: clean up and wait for the TTL.
    if phase in ("Succeeded", "Failed"):
        return _finished(obs, st, ref)

    try:
        spec = api.RecTrainJobSpec.model_validate(obs.spec)
        errors = builders.validate(spec, ref)
    except Exception as exc:  # pydantic.ValidationError, but never crash on bad input
        spec, errors = None, [f"spec: {_short(exc)}"]
    if obs.rejected:
        errors = [*errors, obs.rejected]
    if errors:
        message = "; ".join(errors)
        st.update(phase="Failed", completionTime=fmt_time(now), observedGeneration=obs.generation, restartAfter=None)
        st["conditions"] = set_condition(st["conditions"], "Failed", True, "InvalidSpec", message, now)
        pods = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed"))
        actions: list[Action] = [Event("Warning", "InvalidSpec", message)]
        if pods:
            actions.insert(0, DeletePods(pods))
        d = Decision(st, actions, finished="failed")
        _ttl_requeue(d, spec, st, now)
        return d

    assert spec is not None
    st["observedGeneration"] = obs.generation
    policy = spec.runPolicy
    attempt = int(st["attempt"])

    # A new job.
    if phase is None:
        if policy.suspend:
            return _suspend(obs, st, spec, created=True)
        st.update(phase="Pending", attempt=0, startTime=fmt_time(now), replicas=spec.replicas)
        st["conditions"] = set_condition(st["conditions"], "Created", True, "PodsCreated", f"created {spec.replicas} rank pods", now)
        d = Decision(st, [EnsureChildren(), CreatePods(0, tuple(range(spec.replicas))),
                          Event("Normal", "Created", f"creating {spec.replicas} rank pods (world size {spec.world_size})")],
                     spec=spec, created=True)
        _counts(st, [], spec)
        _deadline_requeue(d, spec, st, now)
        return d

    # Suspension (user or Kueue): delete the pods, no failure.
    if phase == "Suspended":
        if policy.suspend:
            return _suspend(obs, st, spec)
        if obs.pods:  # wait until the old gang is gone (its hostnames are reused)
            return _await_deletion(obs, st, spec)
        st.update(phase="Pending", attempt=attempt + 1, startTime=fmt_time(now), restartAfter=None, replicas=spec.replicas)
        st["conditions"] = set_condition(st["conditions"], "Suspended", False, "Resumed", "job resumed", now)
        d = Decision(st, [EnsureChildren(), CreatePods(attempt + 1, tuple(range(spec.replicas))),
                          Event("Normal", "Resumed", f"resumed: creating {spec.replicas} rank pods (attempt {attempt + 1})")],
                     spec=spec)
        _counts(st, [], spec)
        _deadline_requeue(d, spec, st, now)
        return d
    if policy.suspend:
        return _suspend(obs, st, spec)

    # Deadline.
    start = parse_time(st.get("startTime"))
    if policy.activeDeadlineSeconds is not None and start is not None:
        if (now - start).total_seconds() >= policy.activeDeadlineSeconds:
            return _fail(obs, st, spec, "DeadlineExceeded",
                         f"job was active longer than activeDeadlineSeconds={policy.activeDeadlineSeconds}")

    current = [p for p in obs.pods if p.attempt == attempt]
    stale = [p for p in obs.pods if p.attempt != attempt]

    if phase == "Restarting":
        return _restarting(obs, st, spec)

    # Pending / Running.
    if st.get("replicas") is not None and st["replicas"] != spec.replicas:
        return _resize(obs, st, spec)
    actions: list[Action] = []
    if stale:
        actions.append(DeletePods(tuple(p.name for p in stale if not p.deleting)))
    failures = [f for f in (classify(p, spec.spot.enabled) for p in current) if f is not None]
    by_rank = {p.rank: p for p in current}
    missing = [r for r in range(spec.replicas) if r not in by_rank]
    if phase == "Running" and missing:
        failures.append(Failure("preemption", missing[0], "PodDeleted", None,
                                f"rank {missing[0]} pod was deleted by someone other than the operator"))
    if failures:
        return _gang_failure(obs, st, spec, failures, current, stale)

    _counts(st, current, spec)
    d = Decision(st, actions, spec=spec)
    if missing:  # Pending: (re)create what is missing; AlreadyExists is fine.
        d.actions += [EnsureChildren(), CreatePods(attempt, tuple(missing))]
    n = spec.replicas
    succeeded = sum(1 for p in current if p.phase == "Succeeded")
    running = sum(1 for p in current if p.phase == "Running")
    if len(current) == n and succeeded == n:
        if not st.get("firstRunningTime"):
            # The whole gang ran and finished between two looks: the ranks' own start times say when.
            _first_running(d, st, obs, max((p.started_at or now for p in current), default=now), now)
        st.update(phase="Succeeded", completionTime=fmt_time(now))
        st["conditions"] = set_condition(st["conditions"], "Running", False, "Succeeded", "all ranks finished", now)
        st["conditions"] = set_condition(st["conditions"], "Succeeded", True, "AllRanksSucceeded", f"all {n} ranks exited 0", now)
        d.actions.append(Event("Normal", "Succeeded", f"all {n} ranks exited 0"))
        d.finished = "succeeded"
        _ttl_requeue(d, spec, st, now)
        return d
    if len(current) == n and running > 0 and running + succeeded == n:
        if phase != "Running":
            st["phase"] = "Running"
            st["conditions"] = set_condition(st["conditions"], "Running", True, "AllRanksRunning",
                                             f"all {n} ranks running (attempt {attempt})", now)
            st["conditions"] = set_condition(st["conditions"], "Restarting", False, "Recovered", "gang restarted", now) \
                if condition(st["conditions"], "Restarting") else st["conditions"]
            d.actions.append(Event("Normal", "Running", f"all {n} ranks running (attempt {attempt})"))
            if not st.get("firstRunningTime"):
                _first_running(d, st, obs, now, now)
    _deadline_requeue(d, spec, st, now)
    return d


def _first_running(d: Decision, st: dict[str, Any], obs: Observation, when: datetime, now: datetime) -> None:
    """Record the moment all ranks first ran (never before the job became active, never in the future)."""
    start = parse_time(st.get("startTime")) or obs.created
    when = min(max(when, start), now) if start is not None else min(when, now)
    st["firstRunningTime"] = fmt_time(when)
    if obs.created is not None:
        d.time_to_running = max(0.0, (when - obs.created).total_seconds())


def _short(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors()
            )
        except Exception:
            pass
    return str(exc).splitlines()[0]


def _counts(st: dict[str, Any], current: list[PodView], spec: api.RecTrainJobSpec) -> None:
    running = sum(1 for p in current if p.phase == "Running" and not p.deleting)
    st["readyReplicas"] = running
    st["ready"] = f"{running}/{spec.replicas}"
    st["replicaCounts"] = {
        "active": sum(1 for p in current if p.phase in ("Pending", "Running")),
        "running": running,
        "succeeded": sum(1 for p in current if p.phase == "Succeeded"),
        "failed": sum(1 for p in current if p.phase in ("Failed", "Unknown")),
    }


def _deadline_requeue(d: Decision, spec: api.RecTrainJobSpec, st: dict[str, Any], now: datetime) -> None:
    start = parse_time(st.get("startTime"))
    if spec.runPolicy.activeDeadlineSeconds is not None and start is not None:
        left = spec.runPolicy.activeDeadlineSeconds - (now - start).total_seconds()
        d.requeue_after = _min(d.requeue_after, max(0.0, left) + 0.05)


def _ttl_requeue(d: Decision, spec: api.RecTrainJobSpec | None, st: dict[str, Any], now: datetime) -> None:
    if spec is None or spec.runPolicy.ttlSecondsAfterFinished is None or st.get("childrenDeletedTime"):
        return
    done = parse_time(st.get("completionTime")) or now
    left = spec.runPolicy.ttlSecondsAfterFinished - (now - done).total_seconds()
    d.requeue_after = _min(d.requeue_after, max(0.0, left) + 0.05)


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _suspend(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec, created: bool = False) -> Decision:
    now = obs.now
    actions: list[Action] = []
    live = tuple(p.name for p in obs.pods if not p.deleting)
    if live:
        actions.append(DeletePods(live))
    if st.get("phase") != "Suspended":
        st.update(phase="Suspended", restartAfter=None)
        st["conditions"] = set_condition(st["conditions"], "Suspended", True, "Suspended", "spec.runPolicy.suspend is true", now)
        if condition(st["conditions"], "Running"):
            st["conditions"] = set_condition(st["conditions"], "Running", False, "Suspended", "job suspended", now)
        actions.append(Event("Normal", "Suspended", f"suspended: deleting {len(live)} rank pods"))
    _counts(st, [], spec)
    return Decision(st, actions, spec=spec, created=created)


def _fail(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec, reason: str, message: str) -> Decision:
    now = obs.now
    st.update(phase="Failed", completionTime=fmt_time(now), restartAfter=None)
    st["conditions"] = set_condition(st["conditions"], "Failed", True, reason, message, now)
    if condition(st["conditions"], "Running"):
        st["conditions"] = set_condition(st["conditions"], "Running", False, reason, message, now)
    if condition(st["conditions"], "Restarting"):
        st["conditions"] = set_condition(st["conditions"], "Restarting", False, reason, message, now)
    live = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed") and not p.deleting)
    actions: list[Action] = []
    if live:
        actions.append(DeletePods(live))
    actions.append(Event("Warning", reason, message))
    _counts(st, [p for p in obs.pods if p.attempt == st["attempt"]], spec)
    d = Decision(st, actions, spec=spec, finished="failed")
    _ttl_requeue(d, spec, st, now)
    return d


def _gang_failure(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec, failures: list[Failure],
                  current: list[PodView], stale: list[PodView]) -> Decision:
    now = obs.now
    policy = spec.runPolicy
    first = next((f for f in failures if f.cause == "preemption"), None) or min(failures, key=lambda f: f.rank)
    st["lastFailure"] = {
        "cause": first.cause, "rank": first.rank, "reason": first.reason, "exitCode": first.exit_code,
        "message": first.message, "time": fmt_time(now),
    }
    st["lastFailure"] = {k: v for k, v in st["lastFailure"].items() if v is not None}
    if first.cause == "preemption":
        st["preemptions"] = int(st["preemptions"]) + 1
        if policy.maxPreemptions is not None and st["preemptions"] > policy.maxPreemptions:
            return _fail(obs, st, spec, "PreemptionLimitExceeded",
                         f"{st['preemptions']} preemptions exceed maxPreemptions={policy.maxPreemptions}; last: {first.message}")
    else:
        st["failures"] = int(st["failures"]) + 1
        if st["failures"] > policy.backoffLimit:
            return _fail(obs, st, spec, "BackoffLimitExceeded",
                         f"{st['failures']} application failures exceed backoffLimit={policy.backoffLimit}; last: {first.message}")
    delay = backoff_seconds(policy, int(st["restarts"]))
    st["restarts"] = int(st["restarts"]) + 1
    st["phase"] = "Restarting"
    st["restartAfter"] = fmt_time(now + timedelta(seconds=delay))
    reason = "Preempted" if first.cause == "preemption" else "ApplicationFailed"
    message = f"{first.message}; restarting all {spec.replicas} ranks in {delay:g}s (restart {st['restarts']})"
    st["conditions"] = set_condition(st["conditions"], "Restarting", True, reason, message, now)
    if condition(st["conditions"], "Running"):
        st["conditions"] = set_condition(st["conditions"], "Running", False, reason, first.message, now)
    live = tuple(p.name for p in current + stale if not p.deleting)
    _counts(st, current, spec)
    actions: list[Action] = []
    if live:
        actions.append(DeletePods(live))
    actions.append(Event("Warning", reason, message))
    return Decision(st, actions, requeue_after=max(delay, 0.0) + 0.05, spec=spec, restart_cause=first.cause)


def _restarting(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec) -> Decision:
    now = obs.now
    after = parse_time(st.get("restartAfter")) or now
    _counts(st, [], spec)
    if obs.pods:  # wait until the old gang is gone (its hostnames are reused)
        return _await_deletion(obs, st, spec)
    if now < after:
        return Decision(st, [], spec=spec, requeue_after=(after - now).total_seconds() + 0.05)
    attempt = int(st["attempt"]) + 1
    st.update(phase="Pending", attempt=attempt, restartAfter=None, replicas=spec.replicas)
    d = Decision(st, [EnsureChildren(), CreatePods(attempt, tuple(range(spec.replicas))),
                      Event("Normal", "Restarted", f"creating {spec.replicas} rank pods (attempt {attempt})")], spec=spec)
    _deadline_requeue(d, spec, st, now)
    return d


def _await_deletion(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec) -> Decision:
    live = tuple(p.name for p in obs.pods if not p.deleting)
    stuck = tuple(
        p.name for p in obs.pods
        if p.deleting and p.deleted_at is not None and (obs.now - p.deleted_at).total_seconds() > FORCE_DELETE_AFTER_SECONDS
    )
    actions: list[Action] = []
    if live:
        actions.append(DeletePods(live))
    if stuck:
        actions.append(DeletePods(stuck, force=True))
        actions.append(Event("Warning", "ForceDeleted", f"force-deleted pods stuck terminating: {', '.join(stuck)}"))
    return Decision(st, actions, spec=spec, requeue_after=1.0)


def _resize(obs: Observation, st: dict[str, Any], spec: api.RecTrainJobSpec) -> Decision:
    """spec.replicas changed: restart the gang at the new size (neither a failure nor a preemption)."""
    now = obs.now
    message = f"spec.replicas changed from {st.get('replicas')} to {spec.replicas}: restarting the gang"
    st.update(phase="Restarting", restartAfter=fmt_time(now))
    st["conditions"] = set_condition(st["conditions"], "Restarting", True, "SpecChanged", message, now)
    if condition(st["conditions"], "Running"):
        st["conditions"] = set_condition(st["conditions"], "Running", False, "SpecChanged", message, now)
    live = tuple(p.name for p in obs.pods if not p.deleting)
    _counts(st, [], spec)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Normal", "SpecChanged", message))
    return Decision(st, actions, spec=spec, requeue_after=0.05)


def _finished(obs: Observation, st: dict[str, Any], ref: builders.JobRef) -> Decision:
    now = obs.now
    try:
        spec = api.RecTrainJobSpec.model_validate(obs.spec)
    except Exception:
        spec = None
    actions: list[Action] = []
    if st["phase"] == "Failed":
        live = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed") and not p.deleting)
        if live:
            actions.append(DeletePods(live))
    d = Decision(st, actions, spec=spec)
    ttl = spec.runPolicy.ttlSecondsAfterFinished if spec else None
    if ttl is not None and not st.get("childrenDeletedTime"):
        done = parse_time(st.get("completionTime")) or now
        if (now - done).total_seconds() >= ttl:
            st["childrenDeletedTime"] = fmt_time(now)
            d.actions.append(DeleteChildren())
            d.actions.append(Event("Normal", "ChildrenDeleted", f"ttlSecondsAfterFinished={ttl}: deleted pods, Service and RBAC"))
        else:
            _ttl_requeue(d, spec, st, now)
    return d
