"""Plain-value builders for the lifecycle's table tests (no cluster)."""

from __future__ import annotations

from datetime import datetime, timezone

from rectrain_operator import lifecycle as lc
from rectrain_operator.job_observation import PodView

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def obs(status=None, pods=(), now=T0, **spec):
    return lc.Observation(name="j", namespace="ns", uid="u", generation=1,
                          spec={"image": "img", "replicas": 2, **spec}, status=status or {},
                          pods=list(pods), now=now, created=T0)


def pod(rank, phase="Running", attempt=0, **kw):
    return PodView(name=f"j-{rank}-a{attempt}", rank=rank, attempt=attempt, phase=phase, **kw)


def step(o):
    """Apply a decision's status patch like the API server would (merge patch)."""
    d = lc.decide(o)
    status = dict(o.status)
    for k, v in (d.status or {}).items():
        if v is None:
            status.pop(k, None)
        else:
            status[k] = v
    return d, status


def cond(status, type_):
    """The condition of this type, or None."""
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)
