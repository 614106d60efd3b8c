"""Rank 0's progress reporter: JSON-merge-patches the RecTrainJob's `status.progress` and
`status.metrics` through the status subresource with the pod's own service-account credentials.

It never stops training: patches are sent from a background thread, at most every
`interval` seconds, with the newest values only. On an API error it backs off exponentially
(up to `max_backoff`), logs ONE warning for the first failure of a streak (later failures are
debug-level) and one info line when patching works again.
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

    def close(self, timeout: float = 10.0):
        """Send what is pending (one last try) and stop."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
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
                    if self._closing:
                        break
                    now = time.monotonic()
                    due = last_sent + max(self.interval, backoff)
                    if self._pending is not None and now >= due:
                        break
                    self._cv.wait(timeout=None if self._pending is None else due - now)
                body, self._pending = self._pending, None
                closing = self._closing
            if body is not None:
                last_sent = time.monotonic()
                try:
                    self._send(body)
                except Exception as e:  # ApiException, connection errors, timeouts
                    self.patches_failed += 1
                    backoff = min(self.max_backoff, max(self.interval, backoff * 2 or self.interval))
                    with self._cv:  # keep the newest values, merge what failed underneath
                        if self._pending is None:
                            self._pending = body
                        else:
                            self._pending = {**body, **self._pending}
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
                else:
                    self.patches_ok += 1
                    backoff = 0.0
                    if self._failing:
                        self._failing = False
                        log.info("status updates of RecTrainJob %s/%s work again", self.namespace, self.name)
            if closing:
                return


def _describe(e: Exception) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(e).__name__}: {e}"[:300]
