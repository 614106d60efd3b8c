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
Every handler works on a typed copy of the operator's status (`_Status`), and `decide` turns the
difference from what the API holds into the merge patch.

Failure classification (the first matching rule wins):
  by the pod's state: deleted by someone else / being deleted, phase Unknown (node lost), a
      DisruptionTarget condition, pod reasons Evicted/Preempting/Shutdown/NodeShutdown/Terminated/
      NodeLost/UnexpectedAdmissionError/OutOf* -> preemption; OOMKilled -> failure (even on spot);
  then by the trainer's exit code (the contract in rectrain_api.exit_codes):
      2 (invalid configuration) -> the job fails at once (InvalidConfiguration): no retry can fix it;
      143 (stopped on SIGTERM, checkpointed) -> preemption, on spot or not;
      other 128+N (killed by a signal) -> preemption on spot, failure off spot;
      any other code -> failure.
Preemptions count in status.preemptions (maxPreemptions), failures in status.failures (backoffLimit).
When several ranks fail at once, an invalid configuration wins (it is no side effect of a lost
peer), then a preemption (the others usually died of the lost peer), then the lowest rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Literal

from pydantic import Field, ValidationError

from rectrain_api import exit_codes
from rectrain_api import job as api
from rectrain_api.errors import describe
from rectrain_api.timestamps import fmt_time, parse_time
from rectrain_api.validation import schema_messages

from rectrain_operator import builders, elastic, podgroup
from rectrain_operator.elastic import Placement, ProbeView

# Container waiting reasons that never resolve by themselves: an application failure.
PERMANENT_WAITING_REASONS = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
# Pods still terminating this long after their grace period are force-deleted (node gone).
FORCE_DELETE_AFTER_SECONDS = 60.0
# The requeue slack after a deadline, TTL or backoff: look just after the moment, not just before it.
REQUEUE_SLACK_SECONDS = 0.05

PREEMPTION_REASONS = {
    "Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost", "UnexpectedAdmissionError",
    "DeletionByTaintManager", "EvictionByEvictionAPI", "PreemptionByScheduler", "PreemptionByKubeScheduler",
    "TerminationByKubelet", "DeletionByPodGC",
}
# Reason (lastFailure, Failed condition, Event) of a rank that exited with exit_codes.INVALID_CONFIG.
INVALID_CONFIGURATION = "InvalidConfiguration"
# Condition of a Pending gang with rank pods the scheduler cannot place (its message says why).
UNSCHEDULABLE = "Unschedulable"
TERMINAL_PHASES = ("Succeeded", "Failed")


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
    disruption_message: str | None = None  # and its message (who reclaimed or evicted the pod, and why)
    waiting_reason: str | None = None  # trainer container's waiting reason (e.g. InvalidImageName)
    deleted_at: datetime | None = None  # metadata.deletionTimestamp (when the grace period ends)
    started_at: datetime | None = None  # when the trainer container started (running or terminated state)
    placement: Placement = Placement()  # what the scheduler said about it


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
    disruption = disruption_message = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = cond.get("reason") or "DisruptionTarget"
            disruption_message = cond.get("message")
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
        disruption_message=disruption_message,
        waiting_reason=waiting_reason,
        deleted_at=parse_time(meta.get("deletionTimestamp")),
        started_at=started_at,
        placement=elastic.placement(pod),
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
    probes: list[ProbeView] = field(default_factory=list)  # an elastic job's capacity probes
    gang: podgroup.GangState | None = None  # the current attempt's PodGroup (spec.scheduling.gang), when read


# ----------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class EnsureChildren:
    """Create the headless Service and the trainer ServiceAccount/Role/RoleBinding if missing."""


@dataclass(frozen=True)
class CreatePods:
    attempt: int
    ranks: tuple[int, ...]
    size: int  # rank pods in this attempt (the world size is size x procs)


@dataclass(frozen=True)
class CreateProbes:
    """Create these capacity probes of an elastic job (builders.build_probe)."""

    indices: tuple[int, ...]


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


Action = EnsureChildren | CreatePods | CreateProbes | DeletePods | DeleteChildren | Event


@dataclass
class Decision:
    # Operator-owned status fields to write, as a JSON merge patch (None: unchanged). The phase
    # handlers leave it None; decide() fills it in from the status they changed.
    status: dict[str, Any] | None = None
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None
    spec: api.RecTrainJobSpec | None = None
    # For metrics: what happened in this step.
    created: bool = False
    finished: str | None = None  # "succeeded" | "failed"
    restart_cause: str | None = None  # "preemption" | "failure"
    time_to_running: float | None = None


# -------------------------------------------------------------------------------- conditions


def set_condition(
    conditions: list[api.Condition], type_: str, status: bool, reason: str, message: str, now: datetime
) -> list[api.Condition]:
    """Return conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value: Literal["True", "False"] = "True" if status else "False"
    out = [c.model_copy() for c in conditions]
    for c in out:
        if c.type == type_:
            if c.status != value:
                c.lastTransitionTime = fmt_time(now)
            c.status, c.reason, c.message = value, reason, message
            return out
    out.append(api.Condition(type=type_, status=value, reason=reason, message=message, lastTransitionTime=fmt_time(now)))
    return out


def headline(conditions: list[api.Condition], phase: str | None) -> tuple[str | None, str | None]:
    """Reason and message of the condition that explains the job now (status.reason/message, the
    -o wide columns): the newest true condition; of those that turned true in the same second, the
    one named like the phase, else the later in the list."""
    candidates = [(c.lastTransitionTime or "", c.type == phase, i, c) for i, c in enumerate(conditions) if c.status == "True"]
    if not candidates:
        return None, None
    newest = max(candidates, key=lambda entry: entry[:3])[3]
    return newest.reason, newest.message


def condition(conditions: list[api.Condition], type_: str) -> api.Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _clear_condition(conditions: list[api.Condition], type_: str, reason: str, message: str,
                     now: datetime) -> list[api.Condition]:
    """Set `type_` False, but only when the job has had it at all (no 'Running: False' on a job that never ran)."""
    if condition(conditions, type_) is None:
        return conditions
    return set_condition(conditions, type_, False, reason, message, now)


# ---------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Failure:
    """How a rank failed: `cause` says what it counts against (maxPreemptions or backoffLimit)."""

    cause: Literal["preemption", "failure"]
    rank: int
    reason: str
    exit_code: int | None
    message: str
    retryable: bool = True  # False: no gang restart can help (an invalid configuration); the job fails at once


def _last_lines(text: str | None, lines: int = 3, limit: int = 600) -> str | None:
    """The end of a container's termination message (with FallbackToLogsOnError, its log's tail)."""
    if not text:
        return None
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:]


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


# ------------------------------------------------------------------------------------ decide


class _Status(api.RecTrainJobStatus):
    """The operator's working copy of its own status: RecTrainJobStatus with the counters always set
    (0 until counted, and written as such from the first step on)."""

    attempt: int = Field(0, ge=0)
    restarts: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)
    preemptions: int = Field(0, ge=0)
    resizes: int = Field(0, ge=0)


def decide(obs: Observation) -> Decision:
    current = _owned_fields(obs.status)
    status = _read_status(current)  # a fresh copy: the handlers change it, never obs.status
    d = _decide(obs, status)
    d.actions += _probe_actions(obs, status, d.spec)
    _gang_condition(obs, status, d.spec)
    status.reason, status.message = headline(status.conditions, status.phase)
    d.status = _changed(current, status)
    return d


def _gang_condition(obs: Observation, status: _Status, spec: api.RecTrainJobSpec | None) -> None:
    """GangScheduled: what the gang scheduler says about the attempt's PodGroup, so that `kubectl
    describe` explains why a gang waits (Pending, Inqueue, ...). Running ranks settle it."""
    if spec is None or spec.scheduling.gang == "none" or status.phase not in ("Pending", "Running"):
        return
    name = podgroup.group_name(obs.name, status.attempt)
    if status.phase == "Running":
        value, reason, message = True, "PodsRunning", f"all ranks of PodGroup {name} run"
    elif obs.gang is not None:  # read by the reconciler while Pending
        value, reason, message = podgroup.condition(obs.gang, name)
    else:
        return
    status.conditions = set_condition(status.conditions, "GangScheduled", value, reason, message, obs.now)


def _owned_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The operator's fields of a status as the API holds it (progress and metrics are the trainer's)."""
    return {k: v for k, v in raw.items() if k in api.OPERATOR_STATUS_FIELDS and v is not None}


def _read_status(owned: dict[str, Any]) -> _Status:
    try:
        return _Status.model_validate(owned)
    except ValidationError:
        # A field the operator cannot read (edited by hand, say) is dropped and so rewritten, instead of
        # failing every reconcile of the job.
        return _Status.model_validate({k: v for k, v in owned.items() if _readable(k, v)})


def _readable(name: str, value: Any) -> bool:
    try:
        _Status.model_validate({name: value})
    except ValidationError:
        return False
    return True


def _changed(current: dict[str, Any], status: _Status) -> dict[str, Any] | None:
    """The merge patch from the status the API holds to the next one (None: nothing to write)."""
    new = status.model_dump(exclude_none=True, exclude=set(api.TRAINER_STATUS_FIELDS))
    patch = {k: v for k, v in new.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in new})
    return patch or None


PhaseHandler = Callable[[Observation, _Status, api.RecTrainJobSpec], Decision]


def _decide(obs: Observation, status: _Status) -> Decision:
    if status.phase in TERMINAL_PHASES:
        return _finished(obs, status)  # a finished job keeps its outcome, whatever its spec says now
    spec, errors = _parse_spec(obs)
    if spec is None or errors:
        return _invalid_spec(obs, status, spec, errors)
    status.observedGeneration = obs.generation
    status.desiredReplicas = spec.desired_replicas
    return _PHASES[status.phase](obs, status, spec)


def _parse_spec(obs: Observation) -> tuple[api.RecTrainJobSpec | None, list[str]]:
    """The typed spec and what is wrong with it (the schema's errors, then the cross-field rules, then
    a child the API server refused); a spec that cannot be read at all is None."""
    spec: api.RecTrainJobSpec | None
    try:
        spec = api.RecTrainJobSpec.model_validate(obs.spec)
        errors = builders.validate(spec, builders.JobRef(obs.name, obs.namespace, obs.uid))
    except ValidationError as exc:  # the messages every other validation path gives
        spec, errors = None, schema_messages(exc, "spec.")
    except Exception as exc:  # never crash on bad input
        spec, errors = None, [f"spec: {describe(exc)}"]
    if obs.rejected:
        errors = [*errors, obs.rejected]
    return spec, errors


# ------------------------------------------------------------------------------ phase handlers


def _new(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision:
    """No phase yet: create the gang (attempt 0), or start out suspended."""
    if spec.runPolicy.suspend:
        return _suspend(obs, status, spec, created=True)
    status.startTime = fmt_time(obs.now)
    status.conditions = set_condition(status.conditions, "Created", True, "PodsCreated",
                                      f"created {spec.desired_replicas} rank pods", obs.now)
    event = Event("Normal", "Created", f"creating {spec.desired_replicas} rank pods (world size {spec.world_size})")
    return _start_attempt(obs, status, spec, 0, event, created=True)


def _active(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision:
    """Pending / Running: watch the current gang until all of it runs, finishes, or a rank fails."""
    interrupted = _interruption(obs, status, spec)
    if interrupted is not None:
        return interrupted
    size = _gang_size(status, spec)
    if status.replicas is not None and status.replicas != size:
        return _resize(obs, status, spec)
    gang = _Gang.observe(obs.pods, status.attempt, size)
    failures = _failures(gang, status, spec)
    stall = None if failures else _watch_rendezvous(obs, status, spec, gang)
    if isinstance(stall, Failure):
        d = _gang_failure(obs, status, spec, [stall], gang)
        d.actions.insert(0, Event("Warning", STALLED, stall.message))
        return d
    if failures:
        return _gang_failure(obs, status, spec, failures, gang)
    resized = _elastic_resize(obs, status, spec, gang)
    if resized is not None:
        return resized
    _counts(status, gang.current, spec)
    _placement_condition(obs, status, gang)
    kept = set() if gang.all_up or gang.all_succeeded else _kept_pods(obs, status, spec, attempt=status.attempt - 1)
    d = Decision(actions=_tidy_up(gang, status.attempt, kept), spec=spec)
    if gang.all_succeeded:
        return _succeed(obs, status, gang, d)
    if gang.all_up and status.phase != "Running":
        _mark_running(obs, status, gang, d)
        if rendezvous_timeout(spec) > 0:  # the watchdog's first look
            stall = float(rendezvous_timeout(spec)) + REQUEUE_SLACK_SECONDS
    d.requeue_after = _elastic_settle_requeue(obs, status, spec, gang)
    _deadline_requeue(d, spec, status, obs.now)
    _keep_requeue(d, status, spec, kept, obs.now)
    if isinstance(stall, float):
        d.requeue_after = _min(d.requeue_after, stall)
    return d


def _restarting(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision:
    """Restarting: once the old gang is gone and the backoff has passed, create attempt + 1."""
    interrupted = _interruption(obs, status, spec)
    if interrupted is not None:
        return interrupted
    _counts(status, [], spec)
    # Wait until the old gang is gone (its hostnames are reused, its room too); the failed attempt's
    # pods that ended by themselves hold neither and are kept (for their logs) until the next attempt runs.
    kept = _kept_pods(obs, status, spec)
    if any(p.name not in kept for p in obs.pods) or obs.probes:
        return _await_deletion(obs, spec, keep=kept)
    after = parse_time(status.restartAfter) or obs.now
    if obs.now < after:
        return Decision(spec=spec, requeue_after=(after - obs.now).total_seconds() + REQUEUE_SLACK_SECONDS)
    attempt = status.attempt + 1
    event = Event("Normal", "Restarted", f"creating {_gang_size(status, spec)} rank pods (attempt {attempt})")
    d = _start_attempt(obs, status, spec, attempt, event)
    _keep_requeue(d, status, spec, kept, obs.now)
    return d


def _suspended(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision:
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


def _finished(obs: Observation, status: _Status) -> Decision:
    """Succeeded / Failed: delete what still runs of a failed job; after ttlSecondsAfterFinished, every child."""
    spec = _lenient_spec(obs)
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
        _ttl_requeue(d, spec, status, obs.now)
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


def _start_attempt(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, attempt: int, event: Event,
                   created: bool = False) -> Decision:
    """Phase Pending with a whole new gang: attempt `attempt`, every rank."""
    size = _gang_size(status, spec)
    status.phase, status.attempt, status.restartAfter, status.replicas = "Pending", attempt, None, size
    _counts(status, [], spec)
    d = Decision(actions=[EnsureChildren(), CreatePods(attempt, tuple(range(size)), size), event],
                 spec=spec, created=created)
    _deadline_requeue(d, spec, status, obs.now)
    return d


def _interruption(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision | None:
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


def _suspend(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, created: bool = False) -> Decision:
    """Delete the pods; not a failure."""
    live = tuple(p.name for p in obs.pods if not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    if status.phase != "Suspended":
        now = obs.now
        status.phase, status.restartAfter = "Suspended", None
        status.conditions = set_condition(status.conditions, "Suspended", True, "Suspended",
                                          "spec.runPolicy.suspend is true", now)
        status.conditions = _clear_condition(status.conditions, "Running", "Suspended", "job suspended", now)
        actions.append(Event("Normal", "Suspended", f"suspended: deleting {len(live)} rank pods"))
    _counts(status, [], spec)
    return Decision(actions=actions, spec=spec, created=created)


def _resize(obs: Observation, status: _Status, spec: api.RecTrainJobSpec) -> Decision:
    """spec.replicas (or spec.elastic) changed: restart the gang at the new size (neither a failure
    nor a preemption)."""
    now = obs.now
    field_name = "spec.elastic" if spec.elastic else "spec.replicas"
    message = f"{field_name} changed the size from {status.replicas} to {_gang_size(status, spec)}: restarting the gang"
    status.phase, status.restartAfter = "Restarting", fmt_time(now)
    status.conditions = set_condition(status.conditions, "Restarting", True, "SpecChanged", message, now)
    status.conditions = _clear_condition(status.conditions, "Running", "SpecChanged", message, now)
    live = tuple(p.name for p in obs.pods if not p.deleting)
    _counts(status, [], spec)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Normal", "SpecChanged", message))
    return Decision(actions=actions, spec=spec, requeue_after=REQUEUE_SLACK_SECONDS)


def _succeed(obs: Observation, status: _Status, gang: _Gang, d: Decision) -> Decision:
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
    _ttl_requeue(d, d.spec, status, now)
    return d


def _mark_running(obs: Observation, status: _Status, gang: _Gang, d: Decision) -> None:
    """Every rank of the current attempt runs (or already finished): phase Running."""
    now, n, attempt = obs.now, gang.replicas, status.attempt
    status.phase = "Running"
    status.conditions = set_condition(status.conditions, "Running", True, "AllRanksRunning",
                                      f"all {n} ranks running (attempt {attempt})", now)
    status.conditions = _clear_condition(status.conditions, "Restarting", "Recovered", "gang restarted", now)
    d.actions.append(Event("Normal", "Running", f"all {n} ranks running (attempt {attempt})"))
    if not status.firstRunningTime:
        _first_running(d, status, obs, now)


def _first_running(d: Decision, status: _Status, obs: Observation, when: datetime) -> None:
    """Record the moment all ranks first ran (never before the job became active, never in the future)."""
    start = parse_time(status.startTime) or obs.created
    when = min(max(when, start), obs.now) if start is not None else min(when, obs.now)
    status.firstRunningTime = fmt_time(when)
    if obs.created is not None:
        d.time_to_running = max(0.0, (when - obs.created).total_seconds())


def _fail(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, reason: str, message: str) -> Decision:
    """Phase Failed: delete the ranks still running, then wait for the TTL."""
    now = obs.now
    status.phase, status.completionTime, status.restartAfter = "Failed", fmt_time(now), None
    status.conditions = set_condition(status.conditions, "Failed", True, reason, message, now)
    status.conditions = _clear_condition(status.conditions, "Running", reason, message, now)
    status.conditions = _clear_condition(status.conditions, "Restarting", reason, message, now)
    live = tuple(p.name for p in obs.pods if p.phase not in ("Succeeded", "Failed") and not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Warning", reason, message))
    _counts(status, [p for p in obs.pods if p.attempt == status.attempt], spec)
    d = Decision(actions=actions, spec=spec, finished="failed")
    _ttl_requeue(d, spec, status, now)
    return d


def _invalid_spec(obs: Observation, status: _Status, spec: api.RecTrainJobSpec | None, errors: list[str]) -> Decision:
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
    _ttl_requeue(d, spec, status, now)
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


# ------------------------------------------------------------------------------------ elastic


def _gang_size(status: _Status, spec: api.RecTrainJobSpec) -> int:
    """Rank pods of the current (or next) attempt: spec.replicas, or an elastic job's own size
    (status.replicas, kept within spec.elastic; maxReplicas before the first attempt)."""
    if spec.elastic is None or status.replicas is None:
        return spec.desired_replicas
    return min(max(status.replicas, spec.elastic.minReplicas), spec.elastic.maxReplicas)


def _elastic_resize(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, gang: _Gang) -> Decision | None:
    """An elastic gang that cannot be placed whole shrinks; one running below its size grows into
    the room its placed probes hold. None: neither."""
    if spec.elastic is None:
        return None
    if status.phase == "Running":
        grown, _ = elastic.grown_size(spec, gang.replicas, obs.probes, obs.now)
        if grown is None:
            return None
        placed = grown - gang.replicas
        return _resize_to(obs, status, spec, gang, grown, "ScaledUp",
                          f"{placed} capacity probe{'s' if placed > 1 else ''} placed: growing from {gang.replicas} to {grown} ranks")
    shrunk, _ = elastic.shrunk_size(spec, gang.replicas, [p.placement for p in gang.current], obs.now)
    if shrunk is None:
        return None
    why = next((p.placement.message for p in gang.current if p.placement.unschedulable and p.placement.message), "")
    return _resize_to(obs, status, spec, gang, shrunk, "ScaledDown",
                      f"{gang.replicas - shrunk} of {gang.replicas} rank pods cannot be placed{f' ({why})' if why else ''}: "
                      f"continuing with {shrunk} ranks")


def _placement_condition(obs: Observation, status: _Status, gang: _Gang) -> None:
    """Unschedulable: while a Pending gang has rank pods the scheduler cannot place, its word on
    them, so `kubectl get rtj -o wide` says why the job waits. False once every rank pod is placed."""
    stuck = [p for p in gang.current if p.placement.unschedulable] if status.phase == "Pending" else []
    if not stuck:
        status.conditions = _clear_condition(status.conditions, UNSCHEDULABLE, "Placed", "every rank pod is placed", obs.now)
        return
    why = next((p.placement.message for p in stuck if p.placement.message), "no node fits")
    status.conditions = set_condition(status.conditions, UNSCHEDULABLE, True, UNSCHEDULABLE,
                                      f"{len(stuck)} of {len(gang.current)} rank pods cannot be placed: {why}", obs.now)


def _elastic_settle_requeue(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, gang: _Gang) -> float | None:
    """When to look again while the scheduler's placements settle (no pod event may come then)."""
    if spec.elastic is None:
        return None
    if status.phase == "Running":
        return elastic.grown_size(spec, gang.replicas, obs.probes, obs.now)[1]
    return elastic.shrunk_size(spec, gang.replicas, [p.placement for p in gang.current], obs.now)[1]


def _resize_to(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, gang: _Gang, size: int,
               reason: str, why: str) -> Decision:
    """Phase Restarting towards `size` ranks: the ranks get SIGTERM and checkpoint, the probes go,
    and once all are gone the new size resumes from that checkpoint. Not a failure, not a restart."""
    now = obs.now
    message = f"{why} (from the last checkpoint, global batch unchanged)"
    status.resizes += 1
    status.replicas, status.phase, status.restartAfter = size, "Restarting", fmt_time(now)
    status.conditions = set_condition(status.conditions, "Resized", True, reason, message, now)
    status.conditions = set_condition(status.conditions, "Restarting", True, "Resizing", message, now)
    status.conditions = _clear_condition(status.conditions, "Running", "Resizing", message, now)
    _counts(status, [], spec)
    live = tuple(p.name for p in [*gang.current, *gang.stale, *obs.probes] if not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Normal", "Resized", message))
    return Decision(actions=actions, spec=spec, requeue_after=REQUEUE_SLACK_SECONDS)


def _probe_actions(obs: Observation, status: _Status, spec: api.RecTrainJobSpec | None) -> list[Action]:
    """Capacity probes exist only while an elastic gang runs below its size: create the missing
    ones then, delete every other (whatever the decision was)."""
    running_short = spec is not None and status.phase == "Running" and status.replicas is not None
    wanted = spec.desired_replicas - status.replicas if running_short else 0
    surplus = tuple(p.name for p in obs.probes if not p.deleting and p.index >= wanted)
    missing = elastic.probes_missing(spec, status.replicas, obs.probes) if running_short and wanted > 0 else []
    actions: list[Action] = [DeletePods(surplus)] if surplus else []
    if missing:
        actions.append(CreateProbes(tuple(missing)))
    return actions


# ------------------------------------------------------------------------- rendezvous watchdog

DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS = 600
STALLED = "Stalled"


def rendezvous_timeout(spec: api.RecTrainJobSpec) -> int:
    """runPolicy.rendezvousTimeoutSeconds; when empty, the default for the built-in trainer and off for a
    custom command (it need not report progress). 0: no watchdog."""
    timeout = spec.runPolicy.rendezvousTimeoutSeconds
    if timeout is None:
        return 0 if spec.custom_command else DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS
    return timeout


def _watch_rendezvous(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, gang: _Gang) -> Failure | float | None:
    """The rendezvous watchdog of a Running attempt: a Failure (RendezvousTimeout) when no training step
    was reported within the timeout after every rank ran; else the seconds until it could be, or None.

    What "reported" means: status.progress written during this attempt (updatedTime not before the last
    rank's container started). Rank 0 alone writes it, from its training loop, which it enters only once
    every rank joined the process group (the rendezvous waits for all), so one report proves every rank
    joined; none cannot say which rank is missing: every rank pod runs, and the operator reads no logs
    (each rank that joined logs 'joined: rank r of W'). Clears Stalled once an attempt reports."""
    timeout = rendezvous_timeout(spec)
    running = condition(status.conditions, "Running")
    if status.phase != "Running" or not gang.all_up or running is None or running.status != "True":
        return None
    # Two clocks: the report's time is compared with the ranks' start (both the nodes' clocks), the
    # timeout counts from the moment the operator saw all ranks run (its own clock, like obs.now).
    ran_since = parse_time(running.lastTransitionTime) or obs.now
    started = max((p.started_at for p in gang.current if p.started_at is not None), default=ran_since)
    progress = obs.status.get("progress") if isinstance(obs.status.get("progress"), dict) else {}
    reported_at = parse_time(progress.get("updatedTime"))
    if reported_at is not None and reported_at >= started:
        stalled = condition(status.conditions, STALLED)
        if stalled is not None and stalled.status == "True":
            status.conditions = set_condition(status.conditions, STALLED, False, "Progressing",
                                              f"attempt {status.attempt} reported training steps", obs.now)
        return None
    if timeout <= 0:
        return None
    waited = (obs.now - ran_since).total_seconds()
    if waited < timeout:
        return timeout - waited + REQUEUE_SLACK_SECONDS
    pods = gang.replicas
    ranks = f"rank pods 0-{pods - 1}" if pods > 1 else "rank pod 0"
    message = (f"rendezvous stalled: no training step reported {timeout}s after all {pods} rank pods ran "
               f"(attempt {status.attempt}); not confirmed to have joined: {ranks} (world size {pods * spec.procs}; "
               f"rank 0 reports only after a step every rank takes part in; a rank that joined logs "
               f"'joined: rank r of W')")
    status.conditions = set_condition(status.conditions, STALLED, True, "RendezvousTimeout", message, obs.now)
    return Failure("failure", 0, "RendezvousTimeout", None, message)


# ------------------------------------------------------------------------------ gang failures


@dataclass(frozen=True)
class _Gang:
    """The rank pods of the current attempt, the ones left from earlier attempts, and the ranks without a pod."""

    current: list[PodView]
    stale: list[PodView]
    missing: list[int]
    replicas: int

    @classmethod
    def observe(cls, pods: list[PodView], attempt: int, replicas: int) -> _Gang:
        current = [p for p in pods if p.attempt == attempt]
        ranks = {p.rank for p in current}
        return cls(current=current, stale=[p for p in pods if p.attempt != attempt],
                   missing=[r for r in range(replicas) if r not in ranks], replicas=replicas)

    @property
    def all_succeeded(self) -> bool:
        return len(self.current) == self.replicas and all(p.phase == "Succeeded" for p in self.current)

    @property
    def all_up(self) -> bool:
        """Every rank running or done, at least one still running."""
        phases = [p.phase for p in self.current]
        return (len(phases) == self.replicas and "Running" in phases
                and all(phase in ("Running", "Succeeded") for phase in phases))


def _tidy_up(gang: _Gang, attempt: int, keep: set[str]) -> list[Action]:
    """Delete pods of earlier attempts (but the kept ones); (re)create missing ranks of this one (AlreadyExists is fine)."""
    actions: list[Action] = []
    stale = tuple(p.name for p in gang.stale if not p.deleting and p.name not in keep)
    if stale:
        actions.append(DeletePods(stale))
    if gang.missing:
        actions += [EnsureChildren(), CreatePods(attempt, tuple(gang.missing), gang.replicas)]
    return actions


def _failures(gang: _Gang, status: _Status, spec: api.RecTrainJobSpec) -> list[Failure]:
    failures = [f for f in (classify(p, spec.spot.enabled) for p in gang.current) if f is not None]
    if status.phase == "Running" and gang.missing:  # all ranks ran, so someone else deleted this pod
        rank = gang.missing[0]
        failures.append(Failure("preemption", rank, "PodDeleted", None,
                                f"rank {rank} pod was deleted by someone other than the operator"))
    return failures


def _deciding_failure(failures: list[Failure]) -> Failure:
    """The failure that decides for the gang: an invalid configuration first (no retry fixes it), then a
    preemption (the other ranks usually died of the lost peer; a pod seen failing before a pod found
    missing, as it says more), then the application failure of the lowest rank."""
    invalid = [f for f in failures if not f.retryable]
    if invalid:
        return min(invalid, key=lambda f: f.rank)
    preemption = next((f for f in failures if f.cause == "preemption"), None)
    return preemption or min(failures, key=lambda f: f.rank)


def _gang_failure(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, failures: list[Failure],
                  gang: _Gang) -> Decision:
    """A rank failed: record it, then fail the job (no retry can help, or a limit is exceeded) or restart the gang."""
    first = _deciding_failure(failures)
    _record_failure(status, first, obs.now)
    if not first.retryable:
        return _fail(obs, status, spec, first.reason, first.message)
    exceeded = _limit_exceeded(status, spec.runPolicy, first)
    if exceeded is not None:
        return _fail(obs, status, spec, *exceeded)
    return _restart_gang(obs, status, spec, first, gang)


def _record_failure(status: _Status, failure: Failure, now: datetime) -> None:
    status.lastFailure = api.LastFailure(cause=failure.cause, rank=failure.rank, reason=failure.reason,
                                         exitCode=failure.exit_code, message=failure.message, time=fmt_time(now))
    if failure.cause == "preemption":
        status.preemptions += 1
    else:
        status.failures += 1


def _limit_exceeded(status: _Status, policy: api.RunPolicy, last: Failure) -> tuple[str, str] | None:
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


def _restart_gang(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, first: Failure, gang: _Gang) -> Decision:
    """Phase Restarting: delete every rank pod now, create attempt + 1 after the backoff (see _restarting)."""
    now = obs.now
    delay = backoff_seconds(spec.runPolicy, status.restarts)
    status.restarts += 1
    status.phase, status.restartAfter = "Restarting", fmt_time(now + timedelta(seconds=delay))
    reason = "Preempted" if first.cause == "preemption" else "ApplicationFailed"
    message = f"{first.message}; restarting all {gang.replicas} ranks in {delay:g}s (restart {status.restarts})"
    status.conditions = set_condition(status.conditions, "Restarting", True, reason, message, now)
    status.conditions = _clear_condition(status.conditions, "Running", reason, first.message, now)
    _counts(status, gang.current, spec)
    kept = _kept_pods(obs, status, spec)
    live = tuple(p.name for p in gang.current + gang.stale if not p.deleting and p.name not in kept)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Warning", reason, message))
    return Decision(actions=actions, requeue_after=max(delay, 0.0) + REQUEUE_SLACK_SECONDS, spec=spec,
                    restart_cause=first.cause)


def _ended(pod: PodView) -> bool:
    return pod.phase in ("Succeeded", "Failed") and not pod.deleting


def _keep_until(status: _Status, spec: api.RecTrainJobSpec) -> datetime | None:
    """Until when the last failed attempt's ended pods are kept (runPolicy.keepFailedPodsSeconds after the failure)."""
    failed_at = parse_time(status.lastFailure.time) if status.lastFailure else None
    if failed_at is None or spec.runPolicy.keepFailedPodsSeconds <= 0:
        return None
    return failed_at + timedelta(seconds=spec.runPolicy.keepFailedPodsSeconds)


def _kept_pods(obs: Observation, status: _Status, spec: api.RecTrainJobSpec, attempt: int | None = None) -> set[str]:
    """The names of the failed attempt's pods kept for `kubectl logs`: those that ended by themselves (the
    failing rank's among them; a running pod can only be stopped by deleting it), until the limit.
    `attempt`: the failed attempt (default: the current one, at the failure and while Restarting)."""
    until = _keep_until(status, spec)
    if until is None or obs.now >= until:
        return set()
    attempt = status.attempt if attempt is None else attempt
    return {p.name for p in obs.pods if p.attempt == attempt and _ended(p)}


def _keep_requeue(d: Decision, status: _Status, spec: api.RecTrainJobSpec, kept: set[str], now: datetime) -> None:
    """Look again when the kept pods' time is up (no pod event comes then)."""
    until = _keep_until(status, spec)
    if kept and until is not None:
        d.requeue_after = _min(d.requeue_after, max(0.0, (until - now).total_seconds()) + REQUEUE_SLACK_SECONDS)


# ----------------------------------------------------------------------------------- helpers


def _lenient_spec(obs: Observation) -> api.RecTrainJobSpec | None:
    """The spec of a finished job, for its TTL only: None when it no longer parses."""
    try:
        return api.RecTrainJobSpec.model_validate(obs.spec)
    except ValidationError:
        return None


def _counts(status: _Status, current: list[PodView], spec: api.RecTrainJobSpec) -> None:
    running = sum(1 for p in current if p.phase == "Running" and not p.deleting)
    status.readyReplicas = running
    status.ready = f"{running}/{_gang_size(status, spec)}"
    status.replicaCounts = api.ReplicaCounts(
        active=sum(1 for p in current if p.phase in ("Pending", "Running")),
        running=running,
        succeeded=sum(1 for p in current if p.phase == "Succeeded"),
        failed=sum(1 for p in current if p.phase in ("Failed", "Unknown")),
    )


def _deadline_requeue(d: Decision, spec: api.RecTrainJobSpec, status: _Status, now: datetime) -> None:
    start = parse_time(status.startTime)
    if spec.runPolicy.activeDeadlineSeconds is not None and start is not None:
        left = spec.runPolicy.activeDeadlineSeconds - (now - start).total_seconds()
        d.requeue_after = _min(d.requeue_after, max(0.0, left) + REQUEUE_SLACK_SECONDS)


def _ttl_requeue(d: Decision, spec: api.RecTrainJobSpec | None, status: _Status, now: datetime) -> None:
    if spec is None or spec.runPolicy.ttlSecondsAfterFinished is None or status.childrenDeletedTime:
        return
    done = parse_time(status.completionTime) or now
    left = spec.runPolicy.ttlSecondsAfterFinished - (now - done).total_seconds()
    d.requeue_after = _min(d.requeue_after, max(0.0, left) + REQUEUE_SLACK_SECONDS)


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
