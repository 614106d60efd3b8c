"""When to look at a job again: just after its activeDeadlineSeconds or ttlSecondsAfterFinished
runs out (no event comes then)."""

from __future__ import annotations

from datetime import datetime

from rectrain_api import job as api
from rectrain_api.timestamps import parse_time

from rectrain_operator.job_actions import Decision
from rectrain_operator.job_status import JobStatusDraft

# The requeue slack after a deadline, TTL or backoff: look just after the moment, not just before it.
REQUEUE_SLACK_SECONDS = 0.05


def deadline_requeue(d: Decision, spec: api.RecTrainJobSpec, status: JobStatusDraft, now: datetime) -> None:
    start = parse_time(status.startTime)
    if spec.runPolicy.activeDeadlineSeconds is not None and start is not None:
        left = spec.runPolicy.activeDeadlineSeconds - (now - start).total_seconds()
        d.requeue_after = sooner(d.requeue_after, max(0.0, left) + REQUEUE_SLACK_SECONDS)


def ttl_requeue(d: Decision, spec: api.RecTrainJobSpec | None, status: JobStatusDraft, now: datetime) -> None:
    if spec is None or spec.runPolicy.ttlSecondsAfterFinished is None or status.childrenDeletedTime:
        return
    done = parse_time(status.completionTime) or now
    left = spec.runPolicy.ttlSecondsAfterFinished - (now - done).total_seconds()
    d.requeue_after = sooner(d.requeue_after, max(0.0, left) + REQUEUE_SLACK_SECONDS)


def sooner(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
