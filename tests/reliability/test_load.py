"""Load: 50 small real two-rank training jobs submitted at once to the operator (under the chart's RBAC,
gang scheduling enabled) on the local node. Every rank pod is a real trainer process; the pods' CPU
requests leave the node room for 3 ranks, so at most one gang runs and the rest queue, as on a busy
cluster. The jobs use spec.scheduling.gang coscheduling with the local node's gang binder as their
scheduler (localcluster/rectrain_local/node/gang.py: it places a pod group whole or not at all, with
minMember from the operator's scheduling.x-k8s.io PodGroup). Under the default scheduler, three gangs
could each hold one of the 3 places and wait for their second rank until their rendezvous times out (a
deadlock; with backoffLimit 0 such a job fails the test).

Expect every job Succeeded with a consistent status (one attempt, no restarts, failures or preemptions,
the right replica counts and condition times), every rank pod created exactly once and owned by its
job, no lost progress update (a watch on all jobs sees each job's step only ever move forward and end
at totalSteps with the final AUC), and the operator's peak RSS (the kernel's high-water mark, VmHWM)
within the 200 MB budget of issue 8. The figures are printed (run with `-s` to see them)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from gang_support import COSCHEDULING_CRD, install_crd_file
from jobs_support import chart_rbac_applied, render_chart
from kubernetes import client, watch
from rectrain_api import job as api
from rectrain_api.timestamps import parse_time
from rectrain_local.node.gang import DEFAULT_SCHEDULER_NAME, quantity
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

JOBS = 50
RANKS = 2
NODE_ROOM_RANKS = 3  # the node fits 3 rank pods: one gang at a time, and room for a second one's half
RSS_BUDGET_MB = 200


@pytest.fixture
def operator(k8s_api, kubeconfig, namespace, crd_installed, tmp_path):
    """The operator under the chart's RBAC rendered with gangScheduling.enabled (rights on PodGroups),
    and the coscheduling PodGroup CRD (tests/fixtures/crds) installed."""
    from rtj_harness import Operator

    install_crd_file(k8s_api, COSCHEDULING_CRD)
    rbac_ns = f"rectrain-gang-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=rbac_ns)))
    try:
        docs = render_chart(f"rel-{uuid.uuid4().hex[:5]}", rbac_ns, "gangScheduling.enabled=true")
        with chart_rbac_applied(k8s_api, kubeconfig, docs, rbac_ns, tmp_path / "kubeconfig") as (_, _, path):
            op = Operator(str(path), namespace, tmp_path / "operator.log").start()
            try:
                yield op
            finally:
                op.kill()
    finally:
        core.delete_namespace(rbac_ns)


def rank_cpu(k8s_api) -> str:
    """A CPU request that fits NODE_ROOM_RANKS rank pods on the (one) node, and not one more."""
    (node,) = client.CoreV1Api(k8s_api).list_node().items
    millis = int(quantity(node.status.allocatable["cpu"]) * 1000)
    per_rank = millis // NODE_ROOM_RANKS
    assert per_rank * (NODE_ROOM_RANKS + 1) > millis >= per_rank * NODE_ROOM_RANKS
    return f"{per_rank}m"


def small_job(name: str, index: int, cpu: str = "250m") -> dict:
    rows = 1024 + 256 * (index % 5)  # 4..8 steps of 256: jobs finish at different moments
    trainer = {
        "model": {"embeddingDim": 8, "tableSizes": [100, 200, 300, 400], "bottomMlp": [16, 8], "topMlp": [16]},
        "data": {"source": "synthetic", "synthetic": {"rows": rows, "evalRows": 512, "seed": index}},
        "training": {"epochs": 1, "batchSize": 256, "precision": "fp32", "backend": "gloo", "device": "cpu", "seed": index},
        "reporting": {"progressIntervalSeconds": 0.5, "metricsPort": 0, "logEverySteps": 2},
    }
    spec = {
        "image": "ghcr.io/rectrain/rectrain-trainer:test",
        "replicas": RANKS,
        # A third of the node each (rank_cpu): one gang runs at a time, the rest queue.
        "resources": {"cpu": cpu, "memory": "512Mi"},
        "trainer": trainer,
        # No retry: a gang that waited for its second rank until the rendezvous timed out fails the test.
        "runPolicy": {"backoffLimit": 0},
        "scheduling": {"gang": "coscheduling", "schedulerName": DEFAULT_SCHEDULER_NAME},
    }
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}


class JobWatcher(threading.Thread):
    """Follows every RecTrainJob in the namespace and records each job's progress steps as seen."""

    def __init__(self, api_client, namespace: str) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api_client)
        self.ns = namespace
        self.steps: dict[str, list[int]] = {}
        self.regressions: list[str] = []
        self.stop = threading.Event()

    def relist(self) -> str:
        listing = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL)
        for obj in listing["items"]:
            self.observe(obj)
        return listing["metadata"]["resourceVersion"]

    def run(self) -> None:
        rv = self.relist()
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, self.ns, api.PLURAL,
                                   resource_version=rv, timeout_seconds=2):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    self.observe(obj)
            except client.ApiException as exc:
                if exc.status != 410:  # too old: relist
                    raise
                rv = self.relist()
            finally:
                w.stop()

    def observe(self, obj: dict) -> None:
        name = obj["metadata"]["name"]
        step = ((obj.get("status") or {}).get("progress") or {}).get("step")
        seen = self.steps.setdefault(name, [])
        if step is None:
            if seen:
                self.regressions.append(f"{name}: progress vanished after step {seen[-1]}")
            return
        if seen and step < seen[-1]:
            self.regressions.append(f"{name}: step went back from {seen[-1]} to {step}")
        if not seen or step != seen[-1]:
            seen.append(step)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def check_consistent(job: dict, pods: list) -> list[str]:
    """What is wrong with a finished job's status and pods (empty when nothing is)."""
    name, st = job["metadata"]["name"], job.get("status") or {}
    problems = []
    progress, metrics = st.get("progress") or {}, st.get("metrics") or {}
    expect = {"phase": "Succeeded", "attempt": 0, "restarts": 0, "failures": 0, "preemptions": 0, "replicas": RANKS}
    problems += [f"{k}={st.get(k)!r}, want {v!r}" for k, v in expect.items() if st.get(k) != v]
    counts = st.get("replicaCounts") or {}
    if counts.get("succeeded") != RANKS or counts.get("active", 0) or counts.get("failed", 0):
        problems.append(f"replicaCounts={counts}")
    if not progress.get("totalSteps") or progress.get("step") != progress.get("totalSteps") or progress.get("percent") != 100:
        problems.append(f"progress did not reach the end: {progress}")
    if metrics.get("auc") is None or metrics.get("evalStep") != progress.get("step"):
        problems.append(f"no final evaluation: {metrics}")
    conds = {c["type"]: c for c in st.get("conditions", [])}
    if (conds.get("Succeeded") or {}).get("status") != "True" or (conds.get("Failed") or {}).get("status") == "True":
        problems.append(f"conditions: {[(c['type'], c['status']) for c in conds.values()]}")
    times = [st.get(k) for k in ("startTime", "firstRunningTime", "completionTime")]
    if None in times or not parse_time(times[0]) <= parse_time(times[1]) <= parse_time(times[2]):
        problems.append(f"start/firstRunning/completion times out of order: {times}")
    if [p.metadata.name for p in pods] != [f"{name}-{r}-a0" for r in range(RANKS)]:
        problems.append(f"pods: {[p.metadata.name for p in pods]}")
    if {p.metadata.labels.get("scheduling.x-k8s.io/pod-group") for p in pods} != {f"{name}-a0"}:
        problems.append("pods not in the PodGroup of attempt 0")
    for p in pods:
        if not any(o.kind == api.KIND and o.name == name and o.controller for o in p.metadata.owner_references or []):
            problems.append(f"{p.metadata.name} not owned by the job")
        if p.status.phase != "Succeeded":
            problems.append(f"{p.metadata.name} phase {p.status.phase}")
    return [f"{name}: {p}" for p in problems]


@pytest.mark.timeout(1500)
def test_fifty_two_rank_gangs_at_once(harness, operator, k8s_api, namespace, pods_can_run):
    custom = client.CustomObjectsApi(k8s_api)
    cpu = rank_cpu(k8s_api)
    core = client.CoreV1Api(k8s_api)
    idle_rss, _ = rss_mb(operator.proc.pid)
    watcher = JobWatcher(k8s_api, namespace)
    watcher.start()
    names = [f"load-{i:03d}" for i in range(JOBS)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, small_job(names[i], i, cpu)), range(JOBS)))
    submitted = time.monotonic() - t0
    rss_samples: list[float] = []

    failed: list[str] = []

    def finished() -> bool:
        """True once every job succeeded, or as soon as one failed or the operator died (asserted below)."""
        rss_samples.append(rss_mb(operator.proc.pid)[0])
        items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
        failed[:] = [j["metadata"]["name"] for j in items if (j.get("status") or {}).get("phase") == "Failed"]
        done = sum((j.get("status") or {}).get("phase") == "Succeeded" for j in items)
        return bool(failed) or operator.proc.poll() is not None or done == JOBS

    try:
        wait_for(finished, timeout=1200, interval=2, what=f"{JOBS} jobs Succeeded")
        elapsed = time.monotonic() - t0
        assert operator.proc.poll() is None, "the operator exited"
        assert not failed, f"jobs failed: {failed}: {[harness.status(n).get('lastFailure') for n in failed[:3]]}"
        # The trainer's last status write can land just after the operator's Succeeded.
        wait_for(lambda: all((watcher.steps.get(n) or [None])[-1] is not None for n in names), timeout=30,
                 what="the watch to see every job's progress")
    finally:
        watcher.stop.set()
    _, peak = rss_mb(operator.proc.pid)

    jobs = {j["metadata"]["name"]: j for j in custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]}
    pods: dict[str, list] = {n: [] for n in names}
    for p in core.list_namespaced_pod(namespace, label_selector=api.LABEL_JOB_NAME).items:
        pods[p.metadata.labels[api.LABEL_JOB_NAME]].append(p)
    problems = [p for n in names for p in check_consistent(jobs[n], sorted(pods[n], key=lambda p: p.metadata.name))]
    updates = sum(len(s) for s in watcher.steps.values())
    print(f"\nload: {JOBS} {RANKS}-rank gangs ({cpu} CPU per rank) submitted in {submitted:.1f} s, all Succeeded after {elapsed:.0f} s; "
          f"{updates} distinct progress steps seen by the watch; operator RSS idle {idle_rss:.0f} MB, "
          f"max sampled {max(rss_samples):.0f} MB, peak (VmHWM) {peak:.0f} MB")
    assert not problems, "\n".join(problems[:20])
    assert not watcher.regressions, watcher.regressions[:10]
    # Every job's progress, as seen live, ends at its own totalSteps.
    for n in names:
        assert watcher.steps[n][-1] == jobs[n]["status"]["progress"]["totalSteps"], (n, watcher.steps[n])
    assert peak <= RSS_BUDGET_MB, f"operator peak RSS {peak:.0f} MB > {RSS_BUDGET_MB} MB"
