"""The job's status conditions: set, clear or read one, and the headline (status.reason/message)
that the newest true one gives."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from rectrain_api import job as api
from rectrain_api.timestamps import fmt_time


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


def clear_condition(conditions: list[api.Condition], type_: str, reason: str, message: str,
                     now: datetime) -> list[api.Condition]:
    """Set `type_` False, but only when the job has had it at all (no 'Running: False' on a job that never ran)."""
    if condition(conditions, type_) is None:
        return conditions
    return set_condition(conditions, type_, False, reason, message, now)
