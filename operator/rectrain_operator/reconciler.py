"""Reconcile one RecTrainJob: read it and its pods from the cluster, let the lifecycle decide,
let the builders render, let the cluster layer act. Keys are processed by a small work queue so
one job is never reconciled by two threads at once; state lives in the cluster, the queue only
remembers *when* to look again (a restarted operator relists everything)."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from rectrain_api.timestamps import parse_time

from rectrain_operator import builders, elastic, job_actions, job_observation, lifecycle, podgroup
from rectrain_operator.cluster import ChildError, Cluster
from rectrain_operator.metrics import Metrics

log = logging.getLogger("rectrain.reconciler")

Key = tuple[str, str]  # (namespace, name)
CHILD_RETRY_SECONDS = 0.25  # transient child errors (e.g. ServiceAccount token not minted yet)
CHILD_ERROR_RETRY_SECONDS = 5.0  # other child errors (quota, permissions): retried, with an Event each time
TOKEN_RETRY_SECONDS = 0.05  # a new job's ServiceAccount token is usually minted within tens of milliseconds
# A new job's first pod is retried in place while its token is being minted (first after
# TOKEN_POLL_SECONDS, then twice as long each time up to TOKEN_POLL_MAX_SECONDS: a burst of new jobs
# queues at the controller-manager's token minting, and every refused create is a request), for at
# most TOKEN_WAIT_SECONDS; only then is the whole pass requeued (which re-reads the job and its pods).
TOKEN_POLL_SECONDS = 0.01
TOKEN_POLL_MAX_SECONDS = 0.08
TOKEN_WAIT_SECONDS = 2.0
CREATE_CONCURRENCY = 8  # pod creates in flight per job


class WorkQueue:
    """Deduplicating delayed queue; a key is handed to at most one worker at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._busy: set[Key] = set()
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._cond:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._cond.notify()

    def get(self) -> Key | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                skipped = []
                found = None
                while self._heap:
                    due, key = self._heap[0]
                    if self._due.get(key) != due:
                        heapq.heappop(self._heap)  # superseded entry
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    if key in self._busy:
                        skipped.append((due, key))
                        continue
                    del self._due[key]
                    self._busy.add(key)
                    found = key
                    break
                for item in skipped:
                    heapq.heappush(self._heap, item)
                if found is not None:
                    return found
                timeout = (self._heap[0][0] - now) if self._heap and not skipped else (0.05 if skipped else None)
                self._cond.wait(timeout)
            return None

    @property
    def closed(self) -> bool:
        return self._closed

    def done(self, key: Key) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _token_pending(exc: ChildError) -> bool:
    """The API server refused a pod because its ServiceAccount's token is not minted yet."""
    text = (exc.detail or "").lower()
    return "token" in text and ("serviceaccount" in text or "service account" in text)


def child_order(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ServiceAccount first: the controller-manager mints its token (which pods wait for) while the
    other children are created."""
    return sorted(objs, key=lambda o: o["kind"] != "ServiceAccount")


class Reconciler:
    def __init__(self, cluster: Cluster, metrics: Metrics, namespaces: list[str] | None = None, workers: int = 2,
                 gate: threading.Event | None = None):
        self.cluster = cluster
        self.metrics = metrics
        self.namespaces = namespaces or None
        self.queue = WorkQueue()
        self.workers = workers
        # Set while this replica may act (standby.Standby.active, with --peering); None: always.
        self.gate = gate
        self._threads: list[threading.Thread] = []
        # Reads and writes a pass sends side by side (the pod list with the job read; a new job's status
        # patch with its first creates): each saves the pass a round trip to the API server.
        self._io = ThreadPoolExecutor(max(2, 2 * workers), thread_name_prefix="rectrain-io")

    # ------------------------------------------------------------------------------ loop

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"rectrain-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.queue.close()

    def enqueue(self, namespace: str, name: str, delay: float = 0.0) -> None:
        self.queue.add((namespace, name), delay)

    def active(self) -> bool:
        return self.gate is None or self.gate.is_set()

    @property
    def alive(self) -> bool:
        """Every worker thread is still running (what the liveness probe reports)."""
        return all(t.is_alive() for t in self._threads)

    def resync(self) -> None:
        """List every job in scope: requeue it and refresh the by-phase gauge (nothing while standing by)."""
        if not self.active():
            return
        jobs = self.cluster.list_jobs(self.namespaces)
        self.metrics.set_phases(jobs)
        for j in jobs:
            self.enqueue(j["metadata"]["namespace"], j["metadata"]["name"])

    def _work(self) -> None:
        while True:
            while not self.active():  # standing by (peering): touch nothing, keep the keys
                if self.queue.closed:
                    return
                self.gate.wait(0.5)
            key = self.queue.get()
            if key is None:
                return
            if not self.active():  # paused while waiting for a key: put it back
                self.queue.done(key)
                self.queue.add(key)
                continue
            try:
                again = self.reconcile(*key)
            except Exception:
                log.exception("reconcile %s/%s failed; retrying", *key)
                again = 2.0
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add(key, again)

    # ------------------------------------------------------------------------- reconcile

    def reconcile(self, namespace: str, name: str, now: datetime | None = None) -> float | None:
        """One pass for one job; returns seconds until the next look (None: wait for an event)."""
        started = time.perf_counter()
        try:
            return self._reconcile(namespace, name, now)
        finally:
            self.metrics.reconcile.observe(time.perf_counter() - started)

    def _reconcile(self, namespace: str, name: str, now: datetime | None, rejected: str | None = None) -> float | None:
        listed = self._io.submit(self.cluster.list_pods, namespace, name)  # side by side with the job read
        job = self.cluster.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None  # ownerReferences garbage-collect the children
        meta = job["metadata"]
        children = listed.result()
        pods = [v for v in (job_observation.pod_view(p) for p in children) if v is not None]
        probes = [v for v in (elastic.probe_view(p) for p in children) if v is not None]
        obs = job_observation.Observation(
            name=name,
            namespace=namespace,
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec=job.get("spec") or {},
            status=job.get("status") or {},
            pods=pods,
            now=now or datetime.now(timezone.utc),
            created=parse_time(meta.get("creationTimestamp")),
            rejected=rejected,
            probes=probes,
            gang=self._gang_state(job),
        )
        decision = lifecycle.decide(obs)
        # Status first: if we die after it, the next pass repeats the (idempotent) actions instead
        # of mistaking our own deletions for preemptions. A new job (no phase yet) deletes nothing and
        # a repeated pass would just re-create: its status patch goes out together with its creates.
        patched = None
        if decision.status:
            new_job = not (job.get("status") or {}).get("phase")
            deletes = any(isinstance(a, (job_actions.DeletePods, job_actions.DeleteChildren)) for a in decision.actions)
            if new_job and not deletes and decision.actions:
                patched = self._io.submit(self.cluster.patch_status, namespace, name, decision.status)
            else:
                self.cluster.patch_status(namespace, name, decision.status)
            log.info("job %s/%s: %s", namespace, name, _summary(decision.status))
        try:
            return self._run_actions(job, decision, namespace, name, now, rejected, patched)
        finally:
            if patched is not None:
                patched.result()  # a failed patch fails the pass (retried), as before

    def _run_actions(self, job: dict[str, Any], decision: job_actions.Decision, namespace: str, name: str,
                     now: datetime | None, rejected: str | None, patched) -> float | None:
        meta = job["metadata"]
        requeue = decision.requeue_after
        ref = builders.JobRef(name, namespace, meta["uid"])
        for action in decision.actions:
            try:
                self._act(job, ref, decision, action)
            except ChildError as exc:
                log.warning("job %s/%s: %s", namespace, name, exc)
                if exc.invalid and rejected is None:
                    # The API server will never accept this child: fail the job (InvalidSpec), once.
                    self._count(namespace, decision)
                    if patched is not None:
                        patched.result()  # this pass's status lands before the next pass reads it
                    return self._reconcile(namespace, name, now, rejected=exc.rejection)
                retry = CHILD_RETRY_SECONDS if exc.transient else CHILD_ERROR_RETRY_SECONDS
                if _token_pending(exc):
                    retry = TOKEN_RETRY_SECONDS
                if not exc.transient:
                    self.cluster.post_event(job, "Warning", "ChildError", str(exc))
                requeue = retry if requeue is None else min(requeue, retry)
        self._count(namespace, decision)
        return requeue

    def _act(self, job: dict[str, Any], ref: builders.JobRef, decision: job_actions.Decision, action: Any) -> None:
        spec = decision.spec
        if isinstance(action, job_actions.Event):
            self.cluster.post_event(job, action.type, action.reason, action.message)
        elif isinstance(action, job_actions.EnsureChildren):
            assert spec is not None
            for obj in child_order([builders.build_service(spec, ref), *builders.build_rbac(ref)]):
                self.cluster.create(obj)
        elif isinstance(action, job_actions.CreatePods):
            assert spec is not None
            pods = builders.build_pods(spec, ref, action.attempt, list(action.ranks), action.size)
            if not pods:
                return
            self._ensure_podgroup(spec, ref, action.attempt, action.size)  # before any pod: no half gang
            # The first create alone: while the job's ServiceAccount has no token yet (a new job) the API
            # server refuses every pod the same way, so fail fast instead of sending all of them, and
            # retry just that create until the token is there (usually tens of milliseconds).
            self._create_first(pods[0])
            errors: list[ChildError] = []

            def create(pod: dict[str, Any]) -> None:
                try:
                    self.cluster.create(pod)
                except ChildError as exc:
                    errors.append(exc)

            if len(pods) > 1:
                # The rest concurrently: one request after another leaves the API server idle during
                # every round trip; a few in flight keep it busy.
                with ThreadPoolExecutor(min(CREATE_CONCURRENCY, len(pods) - 1), thread_name_prefix="rectrain-create") as pool:
                    list(pool.map(create, pods[1:]))
            if errors:
                raise errors[0]
        elif isinstance(action, job_actions.CreateProbes):
            assert spec is not None
            for index in action.indices:
                self.cluster.create(builders.build_probe(spec, ref, index))
        elif isinstance(action, job_actions.DeletePods):
            failed_pods: list[ChildError] = []
            for pod_name in action.names:
                try:
                    self.cluster.delete("Pod", ref.namespace, pod_name, grace=0 if action.force else None)
                except ChildError as exc:
                    failed_pods.append(exc)
            if failed_pods:
                raise failed_pods[0]
        elif isinstance(action, job_actions.DeleteChildren):
            account = builders.trainer_account_name(ref)
            targets = [("Pod", p["metadata"]["name"]) for p in self.cluster.list_pods(ref.namespace, ref.name)]
            targets += [("Service", builders.service_name(ref)), ("RoleBinding", account), ("Role", account),
                        ("ServiceAccount", account)]
            failed: list[ChildError] = []
            group_kind = podgroup.kind_for(spec) if spec is not None else None
            if group_kind is not None:
                try:
                    for group in self.cluster.list_podgroups(group_kind, ref.namespace, ref.name):
                        self.cluster.delete_podgroup(group_kind, ref.namespace, group["metadata"]["name"])
                except ChildError as exc:
                    failed.append(exc)
            for kind, name in targets:  # try them all, report the first failure
                try:
                    self.cluster.delete(kind, ref.namespace, name)
                except ChildError as exc:
                    failed.append(exc)
            if failed:
                raise failed[0]
        else:
            raise TypeError(action)

    def _gang_state(self, job: dict[str, Any]) -> podgroup.GangState | None:
        """The current attempt's PodGroup, for the GangScheduled condition: read only while a gang job
        is Pending (one GET more per such pass), None otherwise or when it cannot be read."""
        status = job.get("status") or {}
        if status.get("phase") != "Pending":
            return None
        gang = ((job.get("spec") or {}).get("scheduling") or {}).get("gang")
        kind = podgroup.KINDS.get(gang) if isinstance(gang, str) else None
        if kind is None:
            return None
        meta = job["metadata"]
        try:
            name = podgroup.group_name(meta["name"], int(status.get("attempt") or 0))
            return podgroup.read_state(self.cluster.get_podgroup(kind, meta["namespace"], name))
        except Exception as exc:  # only a condition depends on it: never fail the pass
            log.warning("job %s/%s: could not read its PodGroup: %s", meta["namespace"], meta["name"], exc)
            return None

    def _ensure_podgroup(self, spec: Any, ref: builders.JobRef, attempt: int, size: int) -> None:
        """The attempt's PodGroup (spec.scheduling.gang), and no PodGroup of an earlier attempt."""
        group = builders.build_podgroup(spec, ref, attempt, size)
        kind = podgroup.kind_for(spec)
        if group is None or kind is None:
            return
        self.cluster.create_podgroup(group, kind, podgroup.missing_api_message(spec))
        for old in self.cluster.list_podgroups(kind, ref.namespace, ref.name):
            if podgroup.attempt_of(old) != attempt:
                self.cluster.delete_podgroup(kind, ref.namespace, old["metadata"]["name"])

    def _create_first(self, pod: dict[str, Any]) -> None:
        deadline = time.monotonic() + TOKEN_WAIT_SECONDS
        pause = TOKEN_POLL_SECONDS
        while True:
            try:
                self.cluster.create(pod)
                return
            except ChildError as exc:
                if not _token_pending(exc) or time.monotonic() >= deadline or self.queue.closed:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, TOKEN_POLL_MAX_SECONDS)

    def _count(self, namespace: str, d: job_actions.Decision) -> None:
        m = self.metrics
        if d.created:
            m.created.labels(namespace=namespace).inc()
        if d.finished:
            m.finished.labels(namespace=namespace, result=d.finished).inc()
        if d.restart_cause:
            m.restarts.labels(namespace=namespace, cause=d.restart_cause).inc()
        if d.time_to_running is not None:
            m.time_to_running.observe(d.time_to_running)


def _summary(status: dict[str, Any]) -> str:
    keys = ("phase", "attempt", "ready", "restarts", "failures", "preemptions")
    return " ".join(f"{k}={status[k]}" for k in keys if k in status) or "status updated"
