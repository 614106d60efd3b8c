"""What the lifecycle reads: the job's Observation (its spec, status, rank pods and the time), the
PodView of one rank pod, and the Gang, those pods grouped by the current attempt."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rectrain_api import job as api
from rectrain_api.timestamps import parse_time

from rectrain_operator import builders, elastic, podgroup
from rectrain_operator.elastic import Placement, ProbeView


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


def _last_lines(text: str | None, lines: int = 3, limit: int = 600) -> str | None:
    """The end of a container's termination message (with FallbackToLogsOnError, its log's tail)."""
    if not text:
        return None
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:]


@dataclass(frozen=True)
class Gang:
    """The rank pods of the current attempt, the ones left from earlier attempts, and the ranks without a pod."""

    current: list[PodView]
    stale: list[PodView]
    missing: list[int]
    replicas: int

    @classmethod
    def observe(cls, pods: list[PodView], attempt: int, replicas: int) -> Gang:
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
