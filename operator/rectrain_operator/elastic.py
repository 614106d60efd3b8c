"""The elastic policy (spec.elastic): pure decisions about the size of a gang, from what the
scheduler has said about its pods. The lifecycle asks; the reconciler acts.

- Shrink: when every rank pod of a pending gang has the scheduler's verdict, some cannot be placed
  and the placements have settled, the gang restarts at the size that was placed (if that is at
  least minReplicas; else it waits like any gang). It does not wait for capacity.
- Grow: a gang running below maxReplicas keeps one capacity probe per missing rank (builders.
  build_probe). Probes the scheduler places hold their room; once every probe is judged and the
  placements have settled, the gang restarts at its size plus the placed probes.

A resize is a graceful gang restart: the ranks get SIGTERM, checkpoint and exit 143; the new size
resumes from that checkpoint with the same global batch (training.globalBatchSize).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rectrain_api import job as api
from rectrain_api.timestamps import parse_time

# Placements within this long of each other are one resize: room freed by one deletion usually
# lets several pods in within a second or two (one restart beats two), and the scheduler retries a
# pod it judged unschedulable only after such an event.
SETTLE_SECONDS = 3.0


@dataclass(frozen=True)
class Placement:
    """What the scheduler has said about a pod."""

    placed: bool = False  # bound to a node
    unschedulable: bool = False  # PodScheduled=False, reason Unschedulable
    since: datetime | None = None  # when its PodScheduled condition last changed
    message: str | None = None  # the scheduler's word when it cannot place the pod


def placement(pod: dict[str, Any]) -> Placement:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    return Placement(
        placed=bool(spec.get("nodeName")),
        unschedulable=scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable",
        since=parse_time(scheduled.get("lastTransitionTime")),
        message=scheduled.get("message") if scheduled.get("status") == "False" else None,
    )


@dataclass(frozen=True)
class ProbeView:
    """One capacity probe of the job."""

    name: str
    index: int
    deleting: bool
    placement: Placement


def probe_view(pod: dict[str, Any]) -> ProbeView | None:
    """A ProbeView from a Pod manifest; None when it is no capacity probe."""
    meta = pod.get("metadata") or {}
    try:
        index = int((meta.get("labels") or {})[api.LABEL_PROBE])
    except (KeyError, ValueError):
        return None
    return ProbeView(meta.get("name", ""), index, bool(meta.get("deletionTimestamp")), placement(pod))


def shrunk_size(spec: api.RecTrainJobSpec, size: int, placements: list[Placement], now: datetime) -> tuple[int | None, float | None]:
    """(the smaller size a pending gang of `size` pods restarts at, or None to keep waiting; when to
    look again while the scheduler's verdicts settle, or None)."""
    if spec.elastic is None or len(placements) < size:
        return None, None
    if not any(p.unschedulable for p in placements) or any(not p.placed and not p.unschedulable for p in placements):
        return None, None  # all fit, or the scheduler has not judged every pod yet
    placed = [p for p in placements if p.placed]
    if len(placed) < spec.elastic.minReplicas:
        return None, None  # too few fit (or none yet: an unbound volume, say): wait like any gang
    # A pod placed just now means the room changed; verdicts on the others may be stale until the
    # scheduler retries them.
    latest = max((p.since for p in placed if p.since is not None), default=None)
    wait = SETTLE_SECONDS - (now - latest).total_seconds() if latest is not None else 0.0
    if wait > 0:
        return None, wait
    return len(placed), None


def probes_missing(spec: api.RecTrainJobSpec, size: int, probes: list[ProbeView]) -> list[int]:
    """Indices of the probes a gang running at `size` still has to create."""
    if spec.elastic is None:
        return []
    have = {p.index for p in probes}
    return [i for i in range(spec.desired_replicas - size) if i not in have]


def grown_size(spec: api.RecTrainJobSpec, size: int, probes: list[ProbeView], now: datetime) -> tuple[int | None, float | None]:
    """(the size to grow to, or None; when to look again while placements settle, or None)."""
    live = [p for p in probes if not p.deleting]
    placed = [p for p in live if p.placement.placed]
    if spec.elastic is None or not placed:
        return None, None
    undecided = any(not p.placement.placed and not p.placement.unschedulable for p in live)
    latest = max((p.placement.since for p in placed if p.placement.since is not None), default=now)
    wait = SETTLE_SECONDS - (now - latest).total_seconds()
    if len(placed) < spec.desired_replicas - size and (undecided or wait > 0):
        return None, max(wait, 0.5)
    return min(size + len(placed), spec.desired_replicas), None
