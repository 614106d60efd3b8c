"""The operator's working copy of its own status (JobStatusDraft): read from what the API holds,
turned back into a merge patch, and the gang's size and replica counts kept in it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from rectrain_api import job as api

from rectrain_operator.job_observation import PodView


class JobStatusDraft(api.RecTrainJobStatus):
    """The operator's working copy of its own status: RecTrainJobStatus with the counters always set
    (0 until counted, and written as such from the first step on)."""

    attempt: int = Field(0, ge=0)
    restarts: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)
    preemptions: int = Field(0, ge=0)
    resizes: int = Field(0, ge=0)


def owned_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The operator's fields of a status as the API holds it (progress and metrics are the trainer's)."""
    return {k: v for k, v in raw.items() if k in api.OPERATOR_STATUS_FIELDS and v is not None}


def read_status(owned: dict[str, Any]) -> JobStatusDraft:
    try:
        return JobStatusDraft.model_validate(owned)
    except ValidationError:
        # A field the operator cannot read (edited by hand, say) is dropped and so rewritten, instead of
        # failing every reconcile of the job.
        return JobStatusDraft.model_validate({k: v for k, v in owned.items() if _readable(k, v)})


def _readable(name: str, value: Any) -> bool:
    try:
        JobStatusDraft.model_validate({name: value})
    except ValidationError:
        return False
    return True


def status_patch(current: dict[str, Any], status: JobStatusDraft) -> dict[str, Any] | None:
    """The merge patch from the status the API holds to the next one (None: nothing to write)."""
    new = status.model_dump(exclude_none=True, exclude=set(api.TRAINER_STATUS_FIELDS))
    patch = {k: v for k, v in new.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in new})
    return patch or None


def gang_size(status: JobStatusDraft, spec: api.RecTrainJobSpec) -> int:
    """Rank pods of the current (or next) attempt: spec.replicas, or an elastic job's own size
    (status.replicas, kept within spec.elastic; maxReplicas before the first attempt)."""
    if spec.elastic is None or status.replicas is None:
        return spec.desired_replicas
    return min(max(status.replicas, spec.elastic.minReplicas), spec.elastic.maxReplicas)


def count_replicas(status: JobStatusDraft, current: list[PodView], spec: api.RecTrainJobSpec) -> None:
    running = sum(1 for p in current if p.phase == "Running" and not p.deleting)
    status.readyReplicas = running
    status.ready = f"{running}/{gang_size(status, spec)}"
    status.replicaCounts = api.ReplicaCounts(
        active=sum(1 for p in current if p.phase in ("Pending", "Running")),
        running=running,
        succeeded=sum(1 for p in current if p.phase == "Succeeded"),
        failed=sum(1 for p in current if p.phase in ("Failed", "Unknown")),
    )
