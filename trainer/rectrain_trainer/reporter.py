"""Rank 0's progress reporter: JSON-merge-patches the RecTrainJob's `status.progress` and
`status.metrics` through the status subresource with the pod's own service-account credentials.

It never stops training: patches are sent from a background thread, at most every
`interval` seconds, with the newest values only. On an API error it backs off exponentially
(up to `max_backoff`), logs ONE warning for the first failure of a streak (later failures are
debug-level) and one info line when patching works again. `close` keeps retrying the last values
through a transient outage (an API server restart) for up to its timeout, so the final step and AUC
are not lost when training ends during a blip.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from rectrain_api.progress import Progress, TrainingMetrics

log = logging.getLogger("rectrain.reporter")

GROUP = "rectrain.io"
PLURAL = "rectrainjobs"
DEFAULT_VERSION = "v1alpha1"
FINAL_RETRY_SECONDS = 2.0  # the longest pause between tries of the final update
# Answers that no retry will change (no permission, the job is gone, an invalid patch).
PERMANENT_STATUSES = {400, 401, 403, 404, 422}
API_VERSION_ENV = "RECTRAIN_API_VERSION"  # override of the CRD version the reporter patches


def load_api_client(kubeconfig: str | None = None):
    """In-cluster config when the pod has a service-account token and KUBERNETES_SERVICE_HOST,
    else KUBECONFIG (or ~/.kube/config). Returns a kubernetes.client.ApiClient."""
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    return config.new_client_from_config(config_file=kubeconfig)


class StatusReporter:
    def __init__(self, api_client, name: str, namespace: str, interval: float = 5.0,
                 version: str | None = None, max_backoff: float = 60.0, request_timeout: float = 10.0):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.name = name
        self.namespace = namespace
        self.interval = interval
        self.version = version or os.environ.get(API_VERSION_ENV, DEFAULT_VERSION)
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._pending: dict[str, Any] | None = None
        self._closing = False
        self._close_deadline = float("inf")
        self._failing = False
        self.patches_ok = 0
        self.patches_failed = 0
        self.warnings_logged = 0
        self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
        self._thread.start()

    # -- called from the training loop: never blocks on the network --
    def update(self, progress: Progress, metrics: TrainingMetrics | None = None):
        body: dict[str, Any] = {"progress": progress.model_dump(exclude_none=True)}
        if metrics is not None:
            body["metrics"] = metrics.model_dump(exclude_none=True)
        with self._cv:
            if self._pending is None:
                self._pending = body
            else:
                self._pending.update(body)
            self._cv.notify()

    def close(self, timeout: float = 60.0):
        """Send what is pending, retrying a transient failure for up to `timeout` seconds, and stop."""
        with self._cv:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cv.notify()
        self._thread.join(timeout + self.request_timeout + 1)
        with self._cv:
            lost = self._pending
        if lost is not None:
            log.warning("status reporter for %s/%s: the final update was not delivered (%s)",
                        self.namespace, self.name, lost.get("progress") or lost)
        log.info("status reporter for %s/%s: %d patches sent, %d failed", self.namespace, self.name, self.patches_ok, self.patches_failed)

    # -- background thread --
    def _send(self, body: dict) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP, self.version, self.namespace, PLURAL, self.name, {"status": body},
            _content_type="application/merge-patch+json", _request_timeout=self.request_timeout,
        )

    def _run(self):
        last_sent = float("-inf")
        backoff = 0.0
        while True:
            with self._cv:
                while True:
                    if self._pending is None:
                        if self._closing:
                            return
                        self._cv.wait()
                        continue
                    # While closing, retry the final values soon rather than after the usual interval.
                    gap = min(backoff, FINAL_RETRY_SECONDS) if self._closing else max(self.interval, backoff)
                    wait = last_sent + gap - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                body, self._pending = self._pending, None
                closing = self._closing
            last_sent = time.monotonic()
            try:
                self._send(body)
            except Exception as e:  # ApiException, connection errors, timeouts
                self.patches_failed += 1
                backoff = min(self.max_backoff, max(self.interval, backoff * 2 or self.interval))
                with self._cv:  # keep the newest values, merge what failed underneath
                    self._pending = body if self._pending is None else {**body, **self._pending}
                if not self._failing:
                    self._failing = True
                    self.warnings_logged += 1
                    log.warning(
                        "cannot update status of RecTrainJob %s/%s (%s); training continues, "
                        "retrying with backoff up to %.0fs (further failures are logged at debug level)",
                        self.namespace, self.name, _describe(e), self.max_backoff,
                    )
                else:
                    log.debug("status patch failed again: %s", _describe(e))
                if closing and (getattr(e, "status", None) in PERMANENT_STATUSES or time.monotonic() >= self._close_deadline):
                    return  # what is left pending, close() reports as not delivered
            else:
                self.patches_ok += 1
                backoff = 0.0
                if self._failing:
                    self._failing = False
                    log.info("status updates of RecTrainJob %s/%s work again", self.namespace, self.name)


def _describe(e: Exception) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(e).__name__}: {e}"[:300]
