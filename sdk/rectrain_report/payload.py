"""What goes into status.progress and status.metrics: the field names and ranges of
rectrain_api.progress (Progress, TrainingMetrics; a unit test keeps the two in step). Values the
CRD would refuse (NaN, out of range) are left out rather than sent, so one bad number never loses a
whole update."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

# Wire names of status.metrics, and the snake_case spellings report() also takes.
METRIC_FIELDS = ("auc", "logloss", "evalStep", "rowsSkipped")
_METRIC_ALIASES = {"eval_step": "evalStep", "rows_skipped": "rowsSkipped", "log_loss": "logloss"}
JOB_UID_MAX_LENGTH = 128  # rectrain_api.progress's (a unit test keeps them equal)
_RANGES: dict[str, tuple[float, float]] = {
    "auc": (0.0, 1.0), "logloss": (0.0, math.inf), "percent": (0.0, 100.0),
    "samplesPerSecond": (0.0, math.inf), "etaSeconds": (0.0, math.inf),
}


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _number(name: str, value: Any, digits: int) -> float | None:
    """A finite float within the field's range, rounded for people reading kubectl; else None."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    low, high = _RANGES.get(name, (-math.inf, math.inf))
    if not math.isfinite(number) or not low <= number <= high:
        return None
    return round(number, digits)


def _count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    number = int(value)
    return number if number >= 0 else None


class ProgressTracker:
    """Builds status.progress: percent from step/total, ETA from the step rate seen in this process
    (since its first report, so a resumed run's rate starts at its resume step)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._first: tuple[float, int] | None = None

    def progress(self, step: int, total_steps: int | None = None, loss: float | None = None,
                 samples_per_second: float | None = None, epoch: int | None = None) -> dict[str, Any]:
        step = _count(step)
        if step is None:
            raise ValueError("step must be a count >= 0")
        now = self.clock()
        if self._first is None or step < self._first[1]:
            self._first = (now, step)
        total = _count(total_steps)
        fields: dict[str, Any] = {
            "step": step, "totalSteps": total, "epoch": _count(epoch),
            "loss": _number("loss", loss, 5), "samplesPerSecond": _number("samplesPerSecond", samples_per_second, 1),
            "updatedTime": now_rfc3339(),
        }
        if total:
            fields["percent"] = _number("percent", min(100.0, 100.0 * step / total), 2)
            fields["etaSeconds"] = self._eta(now, step, total)
        return {k: v for k, v in fields.items() if v is not None}

    def _eta(self, now: float, step: int, total: int) -> float | None:
        start, first_step = self._first
        if step >= total:
            return 0.0
        if now <= start or step <= first_step:
            return None
        rate = (step - first_step) / (now - start)
        return _number("etaSeconds", (total - step) / rate, 1)

    def checkpoint(self, step: int) -> dict[str, Any]:
        step = _count(step)
        if step is None:
            raise ValueError("step must be a count >= 0")
        return {"lastCheckpointStep": step, "updatedTime": now_rfc3339()}

    def resumed(self, step: int, checkpoint_job_uid: str | None = None) -> dict[str, Any]:
        step = _count(step)
        if step is None:
            raise ValueError("step must be a count >= 0")
        fields = {"resumedFromStep": step, "updatedTime": now_rfc3339()}
        if isinstance(checkpoint_job_uid, str) and 0 < len(checkpoint_job_uid) <= JOB_UID_MAX_LENGTH:
            fields["checkpointJobUid"] = checkpoint_job_uid
        return fields


def clean_metrics(metrics: dict[str, Any], step: int) -> dict[str, Any]:
    """status.metrics from report()'s `metrics`: known names only (the CRD has no others: the API
    server would prune them), valid values only; evalStep defaults to the step they were reported at."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = _METRIC_ALIASES.get(key, key)
        if name not in METRIC_FIELDS:
            _warn_unknown(key)
            continue
        cleaned = _count(value) if name in ("evalStep", "rowsSkipped") else _number(name, value, 5)
        if cleaned is not None:
            out[name] = cleaned
    if ("auc" in out or "logloss" in out) and "evalStep" not in out:
        out["evalStep"] = _count(step)
    return out


_warned_unknown: set[str] = set()


def _warn_unknown(key: str) -> None:
    """Unknown metric names are dropped with one warning each (reporting never raises)."""
    if key not in _warned_unknown:
        _warned_unknown.add(key)
        logging.getLogger("rectrain_report").warning(
            "rectrain_report: metric %r is not a status.metrics field (%s); it is not reported", key, ", ".join(METRIC_FIELDS))
