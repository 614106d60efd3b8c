"""Thin kopf handlers: every watch event only queues a reconcile of the job it concerns."""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from rectrain_api import job as api

from rectrain_operator.reconciler import Reconciler
from rectrain_operator.standby import Standby

log = logging.getLogger("rectrain.handlers")


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, resync_seconds: float,
             standby: Standby | None = None, exact_namespaces: bool = False) -> None:
    """`standby` (with --peering): the reconciler's gate; see standby.py for why kopf's pause is not enough.
    `exact_namespaces`: the watched namespaces are plain names (no kopf patterns), so kopf need not list
    namespaces to find them."""
    stop = threading.Event()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # we post our own, meaningful Events
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if exact_namespaces:
            # Least-privilege RBAC (the chart's per-namespace Roles) grants no namespace listing: without
            # this kopf retries a forbidden list for about a minute, logging errors, before it starts
            # watching the namespaces at all.
            settings.scanning.disabled = True
        reconciler.start()
        if standby is not None:
            standby.start()

        def resync_loop() -> None:
            while not stop.is_set():
                try:
                    reconciler.resync()
                except Exception as exc:  # the API may be briefly unavailable
                    log.warning("resync failed: %s", exc)
                stop.wait(resync_seconds)

        threading.Thread(target=resync_loop, name="rectrain-resync", daemon=True).start()
        log.info("rectrain operator started (namespaces: %s)", ", ".join(reconciler.namespaces or ["all"]))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same source as cluster.load_client (the in-cluster service account, else KUBECONFIG), read by
        # the kubernetes client: it honours KUBERNETES_SERVICE_HOST/PORT, where kopf's own service-account
        # login always dials https://kubernetes.default.svc:443.
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        stop.set()
        if standby is not None:
            standby.stop()
        reconciler.stop()

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def job_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
        if type != "DELETED":
            reconciler.enqueue(namespace, name)

    # Rank pods and an elastic job's capacity probes: both carry the job's name and our managed-by.
    @kopf.on.event("", "v1", "pods", labels={api.LABEL_JOB_NAME: kopf.PRESENT, api.LABEL_MANAGED_BY: api.MANAGED_BY},
                   registry=registry)
    async def pod_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
        reconciler.enqueue(namespace, labels[api.LABEL_JOB_NAME])

    @kopf.on.probe(id="workers", registry=registry)
    def workers_alive(**_: Any) -> bool:
        return reconciler.alive
