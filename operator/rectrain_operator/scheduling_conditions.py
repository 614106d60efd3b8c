"""What the scheduler says about the gang, as conditions: GangScheduled (the attempt's PodGroup,
spec.scheduling.gang) and Unschedulable (rank pods no node fits), so `kubectl describe` and
`kubectl get rtj -o wide` say why a gang waits."""

from __future__ import annotations

from rectrain_api import job as api

from rectrain_operator import podgroup
from rectrain_operator.conditions import clear_condition, set_condition
from rectrain_operator.job_observation import Gang, Observation
from rectrain_operator.job_status import JobStatusDraft

# Condition of a Pending gang with rank pods the scheduler cannot place (its message says why).
UNSCHEDULABLE = "Unschedulable"


def gang_condition(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec | None) -> None:
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


def placement_condition(obs: Observation, status: JobStatusDraft, gang: Gang) -> None:
    """Unschedulable: while a Pending gang has rank pods the scheduler cannot place, its word on
    them, so `kubectl get rtj -o wide` says why the job waits. False once every rank pod is placed."""
    stuck = [p for p in gang.current if p.placement.unschedulable] if status.phase == "Pending" else []
    if not stuck:
        status.conditions = clear_condition(status.conditions, UNSCHEDULABLE, "Placed", "every rank pod is placed", obs.now)
        return
    why = next((p.placement.message for p in stuck if p.placement.message), "no node fits")
    status.conditions = set_condition(status.conditions, UNSCHEDULABLE, True, UNSCHEDULABLE,
                                      f"{len(stuck)} of {len(gang.current)} rank pods cannot be placed: {why}", obs.now)
