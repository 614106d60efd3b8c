"""The background sender: the newest status values in one slot, patched from a daemon thread.

The training loop only calls `update`, which takes a lock and returns: it never waits for the
network. The thread patches at most every `interval` seconds, newest values only. On an error it
backs off exponentially (up to `max_backoff`) and keeps the values, so they arrive once the API
server answers again; it logs ONE warning for the first failure of a streak (later ones at debug
level) and one info line when patching works again. `close` sends what is pending, retrying a
transient outage for up to its timeout, so the final step and AUC are not lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .wire import DEFAULT_VERSION, Connection, PatchError, patch_status

FINAL_RETRY_SECONDS = 2.0  # the longest pause between tries of the final update
# Answers that no retry will change (no permission, the job is gone, an invalid patch).
PERMANENT_STATUSES = {400, 401, 403, 404, 422}


class StatusSender:
    def __init__(self, conn: Connection, name: str, namespace: str, *, interval: float = 5.0,
                 version: str = DEFAULT_VERSION, max_backoff: float = 60.0, request_timeout: float = 10.0,
                 logger: logging.Logger | None = None):
        self.conn, self.name, self.namespace, self.version = conn, name, namespace, version
        self.interval, self.max_backoff, self.request_timeout = interval, max_backoff, request_timeout
        self.log = logger or logging.getLogger("rectrain_report")
        self._cv = threading.Condition(threading.Lock())
        self._pending: dict[str, dict[str, Any]] | None = None
        self._closing = False
        self._close_deadline = float("inf")
        self._failing = False
        self.patches_ok = 0
        self.patches_failed = 0
        self.warnings_logged = 0
        self._thread = threading.Thread(target=self._run, name="rectrain-status", daemon=True)
        self._thread.start()

    # -- called from the training loop: never blocks on the network --
    def update(self, status: dict[str, dict[str, Any]]) -> None:
        """Queue `status` ({"progress": {...}, "metrics": {...}}), merged over what is still pending."""
        with self._cv:
            self._pending = _merge(self._pending or {}, status)
            self._cv.notify()

    @property
    def pending(self) -> dict[str, dict[str, Any]] | None:
        with self._cv:
            return self._pending

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is pending, retrying for up to `timeout` seconds, and stop; True when all arrived.
        Returns within timeout + request_timeout + 1 seconds."""
        with self._cv:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cv.notify()
        self._thread.join(timeout + self.request_timeout + 1)
        lost = self.pending
        if lost is not None:
            self.log.warning("status reporter for %s/%s: the final update was not delivered (%s)",
                             self.namespace, self.name, lost.get("progress") or lost)
        self.log.info("status reporter for %s/%s: %d patches sent, %d failed",
                      self.namespace, self.name, self.patches_ok, self.patches_failed)
        return lost is None

    # -- background thread --
    def _next(self, last_sent: float, backoff: float) -> tuple[dict | None, bool]:
        """Wait until the next patch is due; (values, closing), or (None, True) when done."""
        with self._cv:
            while True:
                if self._pending is None:
                    if self._closing:
                        return None, True
                    self._cv.wait()
                    continue
                # While closing, retry the final values soon rather than after the usual interval.
                gap = min(backoff, FINAL_RETRY_SECONDS) if self._closing else max(self.interval, backoff)
                wait = last_sent + gap - time.monotonic()
                if wait <= 0:
                    body, self._pending = self._pending, None
                    return body, self._closing
                self._cv.wait(wait)

    def _run(self) -> None:
        last_sent, backoff = float("-inf"), 0.0
        while True:
            body, closing = self._next(last_sent, backoff)
            if body is None:
                return
            last_sent = time.monotonic()
            try:
                patch_status(self.conn, self.name, self.namespace, body, version=self.version, timeout=self.request_timeout)
            except PatchError as e:
                backoff = min(self.max_backoff, max(self.interval, backoff * 2 or self.interval))
                self._failed(body, e)
                if closing and (e.status in PERMANENT_STATUSES or time.monotonic() >= self._close_deadline):
                    return  # what is left pending, close() reports as not delivered
            except Exception as e:  # noqa: BLE001 - a bug here must never reach training
                self._failed(body, PatchError(None, f"{type(e).__name__}: {e}"))
                backoff = self.max_backoff
                if closing:
                    return
            else:
                self.patches_ok += 1
                backoff = 0.0
                if self._failing:
                    self._failing = False
                    self.log.info("status updates of RecTrainJob %s/%s work again", self.namespace, self.name)

    def _failed(self, body: dict, error: PatchError) -> None:
        self.patches_failed += 1
        with self._cv:  # keep the newest values, merge what failed underneath
            self._pending = _merge(body, self._pending or {})
        if not self._failing:
            self._failing = True
            self.warnings_logged += 1
            self.log.warning(
                "cannot update status of RecTrainJob %s/%s (%s); training continues, "
                "retrying with backoff up to %.0fs (further failures are logged at debug level)",
                self.namespace, self.name, error, self.max_backoff,
            )
        else:
            self.log.debug("status patch failed again: %s", error)


def _merge(base: dict[str, dict[str, Any]], newer: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Field-wise merge of status sections (newer wins), like the merge patch the API server applies."""
    out = {section: dict(fields) for section, fields in base.items()}
    for section, fields in newer.items():
        out[section] = {**out.get(section, {}), **fields}
    return out
