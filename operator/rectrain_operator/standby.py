"""Standby: this replica does nothing while kopf's peering has paused it.

Why this module exists. With ``--peering`` several replicas may run; kopf's peering (the
``ClusterKopfPeering``/``KopfPeering`` objects) pauses every replica but the one with the highest
priority. But kopf pauses only *its own* machinery (watch streams, handlers, daemons), and this operator
does its work elsewhere: the kopf handlers merely queue keys for the Reconciler's worker threads, and a
resync thread relists every job periodically. Those threads would go on acting on a paused replica.

kopf 1.45.2 keeps its paused state in a private ``ToggleSet`` created inside ``kopf.spawn_tasks()`` and
offers no public accessor, callback or setting for it (see ``kopf/_core/reactor/running.py``,
``orchestration.py``). Reaching into kopf's internals for it would break silently on a kopf upgrade.

So ``Standby`` follows the same peering object(s) kopf follows, with its own list+watch (the verbs kopf
itself needs on them, nothing more), and applies kopf's own rule
(``kopf/_core/engines/peering.py: process_peering_event``):

* a live peer (``lastseen + lifetime`` still in the future) with a higher priority -> paused;
* a live peer with the same priority -> paused (kopf pauses *all* same-priority operators; we use no
  shard selectors);
* otherwise active.

It is stricter than kopf where that is the safe side:

* no peering object (or no CRD, or no permission to read it) seen yet -> paused; kopf with a mandatory
  peering name also stays paused then;
* our own entry (kopf's keep-alive, under the identity we pass to ``kopf.operator(identity=...)``) must be
  present and live: a replica only acts once the others can see it (so a higher-priority newcomer never
  acts before the incumbent can notice it), and a replica whose keep-alives stopped -- which the others
  treat as dead and take over from -- stops acting too;
* while the watch of a peering object is failing, a paused replica stays paused (kopf, too, only resumes
  on a fresh peering event).

The Reconciler's workers and resync wait on ``Standby.active`` (a ``threading.Event``). A reconcile
already in flight when the replica is paused finishes; nothing new starts. On becoming active again,
``on_active`` runs (the operator triggers a full resync: every job is relisted and reconciled).
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("rectrain.standby")

GROUP, VERSION = "kopf.dev", "v1"
CLUSTER_PLURAL, NAMESPACED_PLURAL = "clusterkopfpeerings", "kopfpeerings"
KOPF_DEFAULT_LIFETIME = 60  # kopf's settings.peering.lifetime default
MAX_SLEEP = 5.0  # re-evaluate at least this often (deadlines pass without any event)


def own_identity() -> str:
    """Like kopf's own: POD_ID (the pod's name, from the downward API) in a cluster, else user@host/pid/random."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    rnd = "".join(random.choices("abcdefhijklmnopqrstuvwxyz0123456789", k=4))
    return f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}/{rnd}"


def _peering_crd(plural: str, kind: str, scope: str) -> dict[str, Any]:
    """kopf's peering CRD, as the Helm chart's templates/peering.yaml installs it."""
    schema = {"type": "object", "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kopf"}},
        "spec": {"scope": scope, "group": GROUP,
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": VERSION, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}]},
    }


def ensure_peering(api_client: client.ApiClient, name: str, namespaces: list[str] | None, timeout: float = 30.0) -> None:
    """Create the peering CRD and object(s) this operator joins when they are missing and it may (with
    an admin's kubeconfig, as `make demo` runs it). Under the Helm chart's RBAC they exist (the chart
    creates them) and nothing is tried. Whatever fails here, Standby stands by until the object exists."""
    custom = client.CustomObjectsApi(api_client)
    kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
    for scope in namespaces or [None]:
        where = f" in {scope}" if scope else ""
        try:
            listed = (custom.list_namespaced_custom_object(GROUP, VERSION, scope, NAMESPACED_PLURAL, field_selector=f"metadata.name={name}")
                      if scope else custom.list_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, field_selector=f"metadata.name={name}"))
            if listed.get("items"):
                continue
        except ApiException as exc:
            if exc.status != 404 or not _create_peering_crd(api_client, scope is not None):
                log.info("peering objects cannot be read (%s %s); standing by until they can", exc.status, exc.reason)
                return
        if _create_peering_object(custom, name, scope, timeout):
            log.info("created the peering object %s %r%s", kind, name, where)
        else:
            log.info("peering object %s %r%s is missing and this operator may not create it: standing by until it exists",
                     kind, name, where)


def _create_peering_crd(api_client: client.ApiClient, namespaced: bool) -> bool:
    plural, kind, scope = (NAMESPACED_PLURAL, "KopfPeering", "Namespaced") if namespaced else (CLUSTER_PLURAL, "ClusterKopfPeering", "Cluster")
    try:
        client.ApiextensionsV1Api(api_client).create_custom_resource_definition(_peering_crd(plural, kind, scope))
        log.info("created the peering CRD %s.%s", plural, GROUP)
    except ApiException as exc:
        if exc.status != 409:  # 409: created meanwhile
            return False
    return True


def _create_peering_object(custom: client.CustomObjectsApi, name: str, scope: str | None, timeout: float) -> bool:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "KopfPeering" if scope else "ClusterKopfPeering", "metadata": {"name": name}}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if scope is None:
                custom.create_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, body)
            else:
                custom.create_namespaced_custom_object(GROUP, VERSION, scope, NAMESPACED_PLURAL, body)
            return True
        except ApiException as exc:
            if exc.status == 404 and time.monotonic() < deadline:  # a new CRD is not served at once
                time.sleep(0.5)
                continue
            return exc.status == 409  # 409: created meanwhile


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    deadline: float  # epoch seconds

    def alive(self, now: float) -> bool:
        return self.deadline > now


def peers_of(body: dict[str, Any] | None, now: float) -> list[Peer]:
    """The peers in a peering object's status, as kopf writes them ({identity: {priority, lifetime, lastseen}})."""
    out = []
    for identity, info in ((body or {}).get("status") or {}).items():
        if not isinstance(info, dict):
            continue
        lastseen = info.get("lastseen")
        try:
            seen = datetime.fromisoformat(lastseen).timestamp() if lastseen else now  # kopf: absent = now
            lifetime = int(info.get("lifetime", KOPF_DEFAULT_LIFETIME))
            priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        out.append(Peer(str(identity), priority, seen + lifetime))
    return out


def verdict(body: dict[str, Any] | None, identity: str, priority: int, now: float) -> tuple[str | None, float]:
    """(why this replica must stand by, or None when it may act; seconds until the verdict may change by time alone)."""
    if body is None:
        return "peering object not found (yet)", MAX_SLEEP
    peers = peers_of(body, now)
    others = [p for p in peers if p.identity != identity and p.alive(now)]
    blocking = [p for p in others if p.priority >= priority]
    me = next((p for p in peers if p.identity == identity), None)
    deadlines = [p.deadline for p in blocking] + ([me.deadline] if me else [])
    wake = min([MAX_SLEEP] + [d - now for d in deadlines if d > now])
    higher = [p.identity for p in blocking if p.priority > priority]
    if higher:
        return f"higher-priority peer(s) alive: {', '.join(sorted(higher))}", wake
    if blocking:
        return f"same-priority peer(s) alive (kopf pauses all of them): {', '.join(sorted(p.identity for p in blocking))}", wake
    if me is None or not me.alive(now):
        return "own keep-alive not in the peering object yet", wake
    return None, wake


class Standby:
    """Follows the peering object(s); ``active`` is set while this replica may act."""

    def __init__(self, api_client: client.ApiClient, name: str, priority: int, identity: str,
                 namespaces: list[str] | None, on_active: Callable[[], None] | None = None,
                 metrics_registry: Any = None):
        self.api = client.CustomObjectsApi(api_client)
        self.name, self.priority, self.identity = name, priority, identity
        self.scopes: list[str | None] = list(namespaces) if namespaces else [None]  # None: ClusterKopfPeering
        self.on_active = on_active
        self.active = threading.Event()
        self._cond = threading.Condition()
        self._bodies: dict[str | None, dict[str, Any] | None] = {s: None for s in self.scopes}
        self._healthy: dict[str | None, bool] = {s: False for s in self.scopes}
        self._stop = threading.Event()
        self._reason: str | None = "starting"
        self._gauge = None
        if metrics_registry is not None:
            from prometheus_client import Gauge

            self._gauge = Gauge("rectrain_operator_active",
                                "1 while this replica acts; 0 while it stands by (kopf peering).",
                                registry=metrics_registry)
            self._gauge.set(0)

    def start(self) -> None:
        log.info("peering %r (%s), priority %d, as %s: standing by until the peering allows acting",
                 self.name, "cluster-wide" if self.scopes == [None] else ", ".join(map(str, self.scopes)),
                 self.priority, self.identity)
        for scope in self.scopes:
            threading.Thread(target=self._follow, args=(scope,), name=f"rectrain-peering-{scope or 'cluster'}", daemon=True).start()
        threading.Thread(target=self._evaluate_loop, name="rectrain-standby", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._set(False, "stopping")

    # ------------------------------------------------------------------------- following

    def _list(self, scope: str | None, **kw: Any) -> dict[str, Any]:
        selector = f"metadata.name={self.name}"
        if scope is None:
            return self.api.list_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, field_selector=selector, **kw)
        return self.api.list_namespaced_custom_object(GROUP, VERSION, scope, NAMESPACED_PLURAL, field_selector=selector, **kw)

    def _store(self, scope: str | None, body: dict[str, Any] | None, healthy: bool) -> None:
        with self._cond:
            self._bodies[scope] = body
            self._healthy[scope] = healthy
            self._cond.notify_all()

    def _follow(self, scope: str | None) -> None:
        where = f"in {scope}" if scope else "cluster-wide"
        complained = False
        while not self._stop.is_set():
            try:
                listed = self._list(scope)
                items = listed.get("items") or []
                self._store(scope, items[0] if items else None, True)
                if not items and not complained:
                    log.warning("peering object %r %s not found: standing by (the Helm chart creates it)", self.name, where)
                    complained = True
                rv = listed["metadata"]["resourceVersion"]
                w = watch.Watch()
                list_fn = (lambda **kw: self._list(scope, **kw))
                for event in w.stream(list_fn, resource_version=rv, timeout_seconds=120, _request_timeout=150):
                    if self._stop.is_set():
                        w.stop()
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":  # e.g. 410 Gone: relist
                        break
                    self._store(scope, None if kind == "DELETED" else obj, True)
                    complained = False
            except ApiException as exc:
                if exc.status in (403, 404):  # no permission / no CRD: kopf stays paused too
                    self._store(scope, None, True)
                else:  # the API server is briefly unavailable: keep the last verdict's inputs
                    with self._cond:
                        self._healthy[scope] = False
                if not complained:
                    log.warning("following peering object %r %s failed: %s %s", self.name, where, exc.status, exc.reason)
                    complained = True
                self._stop.wait(1.0)
            except Exception as exc:  # connection errors, timeouts
                with self._cond:
                    self._healthy[scope] = False
                log.debug("following peering object %r %s: %s; retrying", self.name, where, exc)
                self._stop.wait(1.0)

    # ------------------------------------------------------------------------ evaluating

    def _evaluate_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.time()
                reasons, wake = [], MAX_SLEEP
                for scope in self.scopes:
                    reason, w = verdict(self._bodies[scope], self.identity, self.priority, now)
                    wake = min(wake, w)
                    if reason:
                        reasons.append(f"{scope}: {reason}" if scope else reason)
                healthy = all(self._healthy.values())
            if reasons:
                self._set(False, "; ".join(reasons))
            elif healthy:  # a paused replica resumes only on fresh peering data
                self._set(True, None)
            with self._cond:
                if not self._stop.is_set():
                    self._cond.wait(max(0.05, wake + 0.01))

    def _set(self, active: bool, reason: str | None) -> None:
        was = self.active.is_set()
        if active and not was:
            self._reason = None
            self.active.set()
            if self._gauge is not None:
                self._gauge.set(1)
            log.info("peering %r: active (no live peer with the same or a higher priority); resyncing all jobs", self.name)
            if self.on_active is not None:
                try:
                    self.on_active()
                except Exception as exc:  # the periodic resync catches up
                    log.warning("resync on becoming active failed: %s", exc)
        elif not active and (was or reason != self._reason):
            self.active.clear()
            if self._gauge is not None:
                self._gauge.set(0)
            if was or self._reason is None or reason != self._reason:
                log.info("peering %r: standing by (%s)", self.name, reason)
            self._reason = reason
