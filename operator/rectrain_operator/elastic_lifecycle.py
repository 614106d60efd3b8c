"""An elastic job (spec.elastic) in the lifecycle: a gang that cannot be placed whole shrinks, one
running below its size grows into the room its capacity probes hold, and the probes exist only then.
The policy itself (when to shrink or grow) is elastic.py's."""

from __future__ import annotations

from rectrain_api import job as api
from rectrain_api.timestamps import fmt_time

from rectrain_operator import elastic
from rectrain_operator.conditions import clear_condition, set_condition
from rectrain_operator.job_actions import Action, CreateProbes, Decision, DeletePods, Event
from rectrain_operator.job_observation import Gang, Observation
from rectrain_operator.job_status import JobStatusDraft, count_replicas
from rectrain_operator.requeue_delays import REQUEUE_SLACK_SECONDS


def elastic_resize(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, gang: Gang) -> Decision | None:
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


def elastic_settle_requeue(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, gang: Gang) -> float | None:
    """When to look again while the scheduler's placements settle (no pod event may come then)."""
    if spec.elastic is None:
        return None
    if status.phase == "Running":
        return elastic.grown_size(spec, gang.replicas, obs.probes, obs.now)[1]
    return elastic.shrunk_size(spec, gang.replicas, [p.placement for p in gang.current], obs.now)[1]


def _resize_to(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, gang: Gang, size: int,
               reason: str, why: str) -> Decision:
    """Phase Restarting towards `size` ranks: the ranks get SIGTERM and checkpoint, the probes go,
    and once all are gone the new size resumes from that checkpoint. Not a failure, not a restart."""
    now = obs.now
    message = f"{why} (from the last checkpoint, global batch unchanged)"
    status.resizes += 1
    status.replicas, status.phase, status.restartAfter = size, "Restarting", fmt_time(now)
    status.conditions = set_condition(status.conditions, "Resized", True, reason, message, now)
    status.conditions = set_condition(status.conditions, "Restarting", True, "Resizing", message, now)
    status.conditions = clear_condition(status.conditions, "Running", "Resizing", message, now)
    count_replicas(status, [], spec)
    live = tuple(p.name for p in [*gang.current, *gang.stale, *obs.probes] if not p.deleting)
    actions: list[Action] = [DeletePods(live)] if live else []
    actions.append(Event("Normal", "Resized", message))
    return Decision(actions=actions, spec=spec, requeue_after=REQUEUE_SLACK_SECONDS)


def probe_actions(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec | None) -> list[Action]:
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
