"""Rank 0's progress reporter: the built-in trainer's Progress/TrainingMetrics, handed to the
reporting SDK (`rectrain_report`), which JSON-merge-patches the RecTrainJob's `status.progress` and
`status.metrics` through the status subresource. The wire path, throttling, backoff and the final
retry live in the SDK alone, so the trainer and users' own scripts report the same way.

It never stops training: patches are sent from a background thread, at most every `interval`
seconds, newest values only; on an API error it backs off up to `max_backoff` with one warning per
failure streak; `close` keeps retrying the last values through a transient outage for up to its
timeout, so the final step and AUC are not lost when training ends during an API server restart.
"""

from __future__ import annotations

import logging
import os

from rectrain_api.progress import Progress, TrainingMetrics
from rectrain_report.sender import StatusSender
from rectrain_report.wire import API_VERSION_ENV, DEFAULT_VERSION, GROUP, PLURAL, Connection

__all__ = ["GROUP", "PLURAL", "StatusReporter", "connection", "connection_from_api_client"]

log = logging.getLogger("rectrain.reporter")


def connection(kubeconfig: str | None = None) -> Connection:
    """In a pod, its own service-account token and CA (read by the SDK); else KUBECONFIG (or
    ~/.kube/config), read by the kubernetes client, for a trainer run by hand against a cluster."""
    if kubeconfig is None:
        in_pod = Connection.in_cluster()
        if in_pod is not None:
            return in_pod
    from kubernetes import config

    return connection_from_api_client(config.new_client_from_config(config_file=kubeconfig))


def connection_from_api_client(api_client) -> Connection:
    """The SDK's connection for a kubernetes.client.ApiClient: its server, credentials and TLS."""
    cfg = api_client.configuration
    return Connection(
        server=cfg.host,
        authorization=lambda: cfg.get_api_key_with_prefix("BearerToken", alias="authorization"),
        ca_file=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file, verify=cfg.verify_ssl,
    )


class StatusReporter:
    """`update(Progress, TrainingMetrics)` from the training loop; `close(timeout)` at the end.
    `api` is an SDK Connection or a kubernetes ApiClient."""

    def __init__(self, api, name: str, namespace: str, interval: float = 5.0, version: str | None = None,
                 max_backoff: float = 60.0, request_timeout: float = 10.0):
        conn = api if isinstance(api, Connection) else connection_from_api_client(api)
        self.name, self.namespace = name, namespace
        self._sender = StatusSender(
            conn, name, namespace, interval=interval, version=version or os.environ.get(API_VERSION_ENV, DEFAULT_VERSION),
            max_backoff=max_backoff, request_timeout=request_timeout, logger=log,
        )

    def update(self, progress: Progress, metrics: TrainingMetrics | None = None) -> None:
        body = {"progress": progress.model_dump(exclude_none=True)}
        if metrics is not None:
            body["metrics"] = metrics.model_dump(exclude_none=True)
        self._sender.update(body)

    def close(self, timeout: float = 60.0) -> bool:
        """Send what is pending, retrying a transient failure for up to `timeout` seconds, and stop."""
        return self._sender.close(timeout)

    @property
    def patches_ok(self) -> int:
        return self._sender.patches_ok

    @property
    def patches_failed(self) -> int:
        return self._sender.patches_failed

    @property
    def warnings_logged(self) -> int:
        return self._sender.warnings_logged
