"""A tiny gang-aware scheduler for the local node: places a pod group whole or not at all.

Pods that name it (spec.schedulerName, default `local-gang-scheduler`) are bound to this Node by
groups: all pods with the same generic pod-group key in a namespace form one group, and the group is
bound only once `minMember` of its pods exist and all of them fit into the room the Node has left.
So two gangs never each hold part of the node while they wait for the rest of themselves.

The group and its size come from generic Kubernetes keys only (this module knows no workload):
  - label scheduling.x-k8s.io/pod-group: minMember from that PodGroup (scheduling.x-k8s.io/v1alpha1,
    the scheduler-plugins coscheduling API); until it exists the group waits;
  - else label kueue.x-k8s.io/pod-group-name: minMember from the annotation
    kueue.x-k8s.io/pod-group-total-count;
  - else the pod alone.
Groups are tried oldest first; a group that does not fit waits, and a younger one that fits is placed
meanwhile (backfill). Room is the Node's allocatable minus the requests of every pod bound to it and
not finished (cpu, memory, nvidia.com/gpu, pods), as kube-scheduler counts it.

One thread follows every pod with a watch (a cache of what placement needs); another binds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes import client, watch

log = logging.getLogger("rectrain.node.gang")

DEFAULT_SCHEDULER_NAME = "local-gang-scheduler"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
COSCHEDULING_API = ("scheduling.x-k8s.io", "v1alpha1", "podgroups")
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
RESOURCES = ("cpu", "memory", "nvidia.com/gpu")
RETRY_SECONDS = 1.0  # a waiting group is looked at again at least this often (e.g. its PodGroup appears)
MIN_MEMBER_CACHE_SECONDS = 30.0  # a PodGroup's minMember, once read, is trusted this long

_SUFFIX = {"m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
           "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40)}


def quantity(text: Any) -> Decimal:
    """A Kubernetes quantity as a number (cores, bytes); 0 for what cannot be read."""
    s = str(text).strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if s.endswith(suffix):
            try:
                return Decimal(s[: -len(suffix)]) * _SUFFIX[suffix]
            except ArithmeticError:
                return Decimal(0)
    try:
        return Decimal(s)
    except ArithmeticError:
        return Decimal(0)


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What a pod asks the Node for: its containers' requests (a limit stands in for a missing request)."""
    total = {r: Decimal(0) for r in RESOURCES}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for r in RESOURCES:
            if r in merged:
                total[r] += quantity(merged[r])
    return total


@dataclass
class PodInfo:
    """What placement needs to know about one pod."""

    uid: str
    namespace: str
    name: str
    scheduler: str
    node: str | None
    finished: bool
    deleting: bool
    created: str
    group: tuple[str, str] | None  # (key kind, group name) when the pod is in a pod group
    total_count: int | None  # kueue pod-group-total-count
    requests: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def of(cls, pod: dict[str, Any]) -> PodInfo:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        group: tuple[str, str] | None = None
        if labels.get(COSCHEDULING_LABEL):
            group = ("coscheduling", labels[COSCHEDULING_LABEL])
        elif labels.get(KUEUE_GROUP_LABEL):
            group = ("kueue", labels[KUEUE_GROUP_LABEL])
        try:
            count = int(annotations.get(KUEUE_COUNT_ANNOTATION, ""))
        except ValueError:
            count = None
        return cls(
            uid=meta.get("uid", ""), namespace=meta.get("namespace", ""), name=meta.get("name", ""), scheduler=spec.get("schedulerName") or "",
            node=spec.get("nodeName") or None, finished=(pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            deleting=bool(meta.get("deletionTimestamp")), created=meta.get("creationTimestamp") or "",
            group=group, total_count=count, requests=pod_requests(pod),
        )


@dataclass
class Group:
    namespace: str
    key: tuple[str, str] | None
    waiting: list[PodInfo]  # unbound members (or the lone pod)
    bound: int = 0  # members already on a node

    @property
    def created(self) -> str:
        return min(p.created for p in self.waiting)


def free_room(allocatable: dict[str, Decimal], pods: list[PodInfo], node: str) -> dict[str, Decimal]:
    """Allocatable minus what the unfinished pods bound to `node` request ("pods" counts them)."""
    room = dict(allocatable)
    for p in pods:
        if p.node == node and not p.finished:
            for r, v in p.requests.items():
                room[r] = room.get(r, Decimal(0)) - v
            room["pods"] = room.get("pods", Decimal(0)) - 1
    return room


def fits(room: dict[str, Decimal], pods: list[PodInfo]) -> bool:
    need: dict[str, Decimal] = {"pods": Decimal(len(pods))}
    for p in pods:
        for r, v in p.requests.items():
            need[r] = need.get(r, Decimal(0)) + v
    return all(v <= 0 or room.get(r, Decimal(0)) >= v for r, v in need.items())


def take(room: dict[str, Decimal], pods: list[PodInfo]) -> None:
    for p in pods:
        for r, v in p.requests.items():
            room[r] = room.get(r, Decimal(0)) - v
        room["pods"] = room.get("pods", Decimal(0)) - 1


def groups(pods: list[PodInfo], scheduler: str) -> list[Group]:
    """The unbound pods that name `scheduler`, grouped, oldest group first (members already bound counted)."""
    by_key: dict[tuple[str, Any], Group] = {}
    for p in pods:
        if p.scheduler != scheduler or p.node or p.finished or p.deleting:
            continue
        key = (p.namespace, p.group or ("pod", p.name))
        by_key.setdefault(key, Group(p.namespace, p.group, [])).waiting.append(p)
    for p in pods:
        if p.node and not p.finished and p.group and (p.namespace, p.group) in by_key:
            by_key[(p.namespace, p.group)].bound += 1
    return sorted(by_key.values(), key=lambda g: (g.created, g.namespace, str(g.key)))


def placeable(group: Group, min_member: int | None, room: dict[str, Decimal]) -> bool:
    """A group is placed when enough of it exists (minMember, counting members already bound) and all its
    waiting pods fit at once; None minMember (its PodGroup not there yet) waits."""
    if min_member is None or group.bound + len(group.waiting) < min_member:
        return False
    return fits(room, group.waiting)


class GangBinder:
    """Binds the pods naming `scheduler_name` to `node_name`, a group at a time (see the module doc)."""

    def __init__(self, api: client.ApiClient, node_name: str, allocatable: dict[str, str],
                 scheduler_name: str = DEFAULT_SCHEDULER_NAME, stopping: threading.Event | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.node = node_name
        self.scheduler = scheduler_name
        self.allocatable = {r: quantity(v) for r, v in allocatable.items()}
        self.stopping = stopping or threading.Event()
        self.pods: dict[str, PodInfo] = {}  # uid -> what placement needs
        # Pods this binder bound (uid -> node): a watch event older than the binding must not make the
        # cache think the pod unbound (and its room free) again.
        self.bound: dict[str, str] = {}
        self.min_members: dict[tuple[str, str], tuple[int, float]] = {}  # PodGroup -> (minMember, when read)
        self.lock = threading.Lock()
        self.changed = threading.Event()

    def start(self) -> GangBinder:
        threading.Thread(target=self._follow, name="gang-watch", daemon=True).start()
        threading.Thread(target=self._bind_loop, name="gang-bind", daemon=True).start()
        return self

    # ---- the cache -------------------------------------------------------------------------------
    def _follow(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(_preload_content=False)
                data = json.loads(listing.data)
                with self.lock:
                    self.pods = {}
                    for p in data.get("items") or []:
                        self._remember(PodInfo.of(p))
                self.changed.set()
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=data["metadata"]["resourceVersion"],
                                              timeout_seconds=30, _request_timeout=(10, 60), _preload_content=False)
                for event in stream:
                    if self.stopping.is_set():
                        return
                    if event["type"] == "ERROR":
                        break
                    raw = event["raw_object"]
                    uid = raw["metadata"]["uid"]
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.pods.pop(uid, None)
                            self.bound.pop(uid, None)
                        else:
                            self._remember(PodInfo.of(raw))
                    self.changed.set()
            except Exception as exc:  # noqa: BLE001 - the binder outlives API blips
                log.warning("gang binder: pod watch interrupted (%s); re-listing", exc)
                self.stopping.wait(1)

    def _remember(self, info: PodInfo) -> None:
        if info.node is None and info.uid in self.bound:
            info.node = self.bound[info.uid]
        self.pods[info.uid] = info

    # ---- placement -------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        while not self.stopping.is_set():
            self.changed.wait(RETRY_SECONDS)
            self.changed.clear()
            try:
                self.place()
            except Exception as exc:  # noqa: BLE001
                log.warning("gang binder: placement round failed: %s", exc)

    def place(self) -> None:
        """One round: bind every group that is complete and fits, oldest first."""
        with self.lock:
            pods = list(self.pods.values())
        waiting = groups(pods, self.scheduler)
        if not waiting:
            return
        room = free_room(self.allocatable, pods, self.node)
        for group in waiting:
            # Room first: it needs no request, and while the node is full no group is looked up.
            if not fits(room, group.waiting) or not placeable(group, self.min_member(group), room):
                continue
            take(room, group.waiting)
            for p in group.waiting:
                self._bind(p)

    def min_member(self, group: Group) -> int | None:
        if group.key is None:
            return 1
        kind, name = group.key
        if kind == "kueue":
            counts = [p.total_count for p in group.waiting if p.total_count]
            return max(counts) if counts else None
        key = (group.namespace, name)
        if len(self.min_members) > 512:  # one entry per group ever seen: forget the stale ones
            now = time.monotonic()
            self.min_members = {k: v for k, v in self.min_members.items() if now - v[1] < MIN_MEMBER_CACHE_SECONDS}
        cached = self.min_members.get(key)
        if cached is not None and time.monotonic() - cached[1] < MIN_MEMBER_CACHE_SECONDS:
            return cached[0]
        try:
            pg = self.custom.get_namespaced_custom_object(*COSCHEDULING_API[:2], group.namespace, COSCHEDULING_API[2], name)
        except client.ApiException as exc:
            if exc.status != 404:
                log.warning("gang binder: PodGroup %s/%s: %s", group.namespace, name, exc.reason)
            return None
        value = int(((pg.get("spec") or {}).get("minMember")) or 1)
        self.min_members[key] = (value, time.monotonic())
        return value

    def _bind(self, pod: PodInfo) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name, "namespace": pod.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        try:
            # Raw answer: the client's Binding model cannot parse what the API server returns.
            self.core.create_namespaced_pod_binding(pod.name, pod.namespace, body, _preload_content=False)
        except client.ApiException as exc:  # deleted or bound meanwhile: the next round sees it
            log.info("gang binder: binding %s/%s failed: %s", pod.namespace, pod.name, exc.reason)
            return
        with self.lock:
            self.bound[pod.uid] = self.node
            pod.node = self.node  # counted as placed before the watch says so
        log.info("gang binder: bound %s/%s to %s", pod.namespace, pod.name, self.node)
