"""Report a training script's progress into its RecTrainJob's status. Standard library only.

    import rectrain_report as rr
    rr.report(step=i, total_steps=n, loss=loss, samples_per_second=sps, epoch=e, metrics={"auc": auc})
    rr.checkpoint(step=i)          # after a checkpoint is complete
    rr.resumed(step=i, checkpoint_job_uid=uid)  # after resuming from one (uid: what it recorded)

`kubectl get rtj` then shows the step, percent and AUC. Inside a RecTrainJob's pod (RECTRAIN_JOB_NAME,
RECTRAIN_JOB_NAMESPACE, KUBERNETES_SERVICE_HOST and a service-account token are there) rank 0
(RANK unset or 0) patches status.progress / status.metrics; everywhere else every call does nothing,
so the same script runs on a laptop. Calls never raise and never wait for the network: a background
thread sends the newest values at most every RECTRAIN_REPORT_INTERVAL seconds (default 5), retrying
while the API server is away; at exit it tries for up to RECTRAIN_REPORT_FINAL_SECONDS (default 5)
to deliver the last values. The wire format is in docs/custom-scripts.md.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from .payload import METRIC_FIELDS, ProgressTracker, clean_metrics
from .sender import StatusSender
from .wire import API_VERSION_ENV, DEFAULT_VERSION, JOB_NAME_ENV, JOB_NAMESPACE_ENV, Connection

__all__ = ["Reporter", "report", "checkpoint", "resumed", "close", "configure", "METRIC_FIELDS"]

INTERVAL_ENV = "RECTRAIN_REPORT_INTERVAL"
FINAL_SECONDS_ENV = "RECTRAIN_REPORT_FINAL_SECONDS"
DEFAULT_INTERVAL = 5.0
DEFAULT_FINAL_SECONDS = 5.0

log = logging.getLogger("rectrain_report")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class Reporter:
    """Reports one job's progress. Disabled (every call a no-op) outside a pod, off rank 0, or when
    no job is named; `enabled` says which."""

    def __init__(self, name: str | None = None, namespace: str | None = None, *, connection: Connection | None = None,
                 interval: float | None = None, rank: int | None = None, request_timeout: float = 10.0,
                 max_backoff: float = 60.0, logger: logging.Logger | None = None):
        name = name or os.environ.get(JOB_NAME_ENV)
        namespace = namespace or os.environ.get(JOB_NAMESPACE_ENV)
        rank = _env_rank() if rank is None else rank
        self.tracker = ProgressTracker()
        self.sender: StatusSender | None = None
        if not name or not namespace or rank != 0:
            return
        connection = connection or Connection.in_cluster()
        if connection is None:
            return
        self.sender = StatusSender(
            connection, name, namespace, interval=_env_float(INTERVAL_ENV, DEFAULT_INTERVAL) if interval is None else interval,
            version=os.environ.get(API_VERSION_ENV) or DEFAULT_VERSION, max_backoff=max_backoff,
            request_timeout=request_timeout, logger=logger or log,
        )

    @property
    def enabled(self) -> bool:
        return self.sender is not None

    def report(self, step: int, total_steps: int | None = None, loss: float | None = None,
               samples_per_second: float | None = None, epoch: int | None = None,
               metrics: dict[str, float] | None = None) -> None:
        """Training has done `step` global steps (percent and ETA are computed here); `metrics` are
        held-out results such as {"auc": 0.79, "logloss": 0.45}."""
        if self.sender is None:
            return
        try:
            status = {"progress": self.tracker.progress(step, total_steps, loss, samples_per_second, epoch)}
            if metrics:
                status["metrics"] = clean_metrics(metrics, step)
            self.sender.update(status)
        except Exception as e:  # noqa: BLE001 - reporting never breaks training
            log.debug("rectrain_report: report(step=%r) ignored: %s", step, e)

    def checkpoint(self, step: int) -> None:
        """A checkpoint of `step` is complete (status.progress.lastCheckpointStep)."""
        if self.sender is None:
            return
        try:
            self.sender.update({"progress": self.tracker.checkpoint(step)})
        except Exception as e:  # noqa: BLE001
            log.debug("rectrain_report: checkpoint(step=%r) ignored: %s", step, e)

    def resumed(self, step: int, checkpoint_job_uid: str | None = None) -> None:
        """This run resumed from the checkpoint of `step`, which the job with metadata.uid
        `checkpoint_job_uid` wrote (record RECTRAIN_JOB_UID in your checkpoints to know it). The
        operator warns when that is another job's (status.progress.checkpointJobUid)."""
        if self.sender is None:
            return
        try:
            self.sender.update({"progress": self.tracker.resumed(step, checkpoint_job_uid)})
        except Exception as e:  # noqa: BLE001
            log.debug("rectrain_report: resumed(step=%r) ignored: %s", step, e)

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is pending (trying for up to `timeout` seconds) and stop; True when nothing was lost."""
        if self.sender is None:
            return True
        return self.sender.close(_env_float(FINAL_SECONDS_ENV, DEFAULT_FINAL_SECONDS) if timeout is None else timeout)


def _env_rank() -> int:
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        return 0


# ---- the process-wide reporter behind the module functions ---------------------------------------

_default: Reporter | None = None
_default_lock = threading.Lock()


def configure(**kwargs) -> Reporter:
    """Replace the process-wide reporter (keyword arguments as for Reporter, e.g. interval=1.0)."""
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.close(0)
    reporter = Reporter(**kwargs)
    with _default_lock:
        _default = reporter
    return reporter


def _get() -> Reporter:
    global _default
    with _default_lock:
        if _default is None:
            try:
                _default = Reporter()
            except Exception as e:  # noqa: BLE001 - an odd environment disables reporting, never the script
                log.warning("rectrain_report: status reporting disabled: %s", e)
                _default = Reporter(rank=-1)
        return _default


def report(step: int, total_steps: int | None = None, loss: float | None = None, samples_per_second: float | None = None,
           epoch: int | None = None, metrics: dict[str, float] | None = None) -> None:
    """See Reporter.report."""
    _get().report(step, total_steps, loss, samples_per_second, epoch, metrics)


def checkpoint(step: int) -> None:
    """See Reporter.checkpoint."""
    _get().checkpoint(step)


def resumed(step: int, checkpoint_job_uid: str | None = None) -> None:
    """See Reporter.resumed."""
    _get().resumed(step, checkpoint_job_uid)


def close(timeout: float | None = None) -> bool:
    """Deliver the last values now (also done at exit). See Reporter.close."""
    with _default_lock:
        reporter = _default
    return True if reporter is None else reporter.close(timeout)


atexit.register(close)
