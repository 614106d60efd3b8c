"""An elastic RecTrainJob (minReplicas 1, maxReplicas 3) on the local node, with real training:
room for 2 ranks -> it runs at 2; a higher-priority pod takes one rank's room (the scheduler
preempts a rank, as a spot reclaim with no replacement would) -> it continues at 1; the room is
freed -> its capacity probes are placed and it grows back to 3; it ends Succeeded, and no step
regresses by more than one checkpoint interval. Room is what the real scheduler sees: the node's
allocatable CPU minus the requests of filler pods this test places."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import pytest
from jobs_support import TABLES, kubectl_apply
from support import wait_for

from rectrain_api import job as api
from rectrain_api.quantity import parse_quantity

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RANK_CPU_MILLI = 400
CHECKPOINT_EVERY = 20
PRIORITY_CLASS = "rectrain-test-filler"


def test_elastic_job_shrinks_with_capacity_and_grows_back(harness, operator, kubeconfig, namespace, k8s_api):
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    _ensure_priority_class(client.SchedulingV1Api(k8s_api))
    # Room is measured once: earlier tests' pods must be gone from the node first (a namespace being
    # deleted frees its room only when the scheduler sees its pods go).
    wait_for(lambda: not _other_pods_on_node(core, namespace), timeout=180, what="earlier tests' pods to leave the node")
    room = _free_milli_cpu(core)
    # Room for two ranks and a half: the third rank and a second filler of one rank do not fit.
    _filler(core, namespace, "room", room - 2 * RANK_CPU_MILLI - RANK_CPU_MILLI // 2)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    kubectl_apply(kubeconfig, namespace, claim, _elastic_job("elastic"))
    timeline = Timeline(harness, "elastic")

    timeline.wait(lambda s: s.get("phase") == "Running" and s.get("replicas") == 2 and _step(s) >= 2 * CHECKPOINT_EVERY,
                  "the job to run at 2 ranks past two checkpoints", timeout=300)
    wait_for(lambda: any(p.metadata.labels.get(api.LABEL_PROBE) for p in harness_pods(core, namespace)),
             what="a capacity probe for the missing rank")

    _filler(core, namespace, "taker", RANK_CPU_MILLI, wait=False)  # preempts one rank, keeps its room
    timeline.wait(lambda s: s.get("phase") == "Running" and s.get("replicas") == 1 and s.get("attempt", 0) >= 2,
                  "the job to continue at 1 rank", timeout=240)
    shrunk_at = _step(harness.status("elastic"))
    timeline.wait(lambda s: _step(s) >= shrunk_at + CHECKPOINT_EVERY, "progress at 1 rank", timeout=240)

    for name in ("room", "taker"):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    timeline.wait(lambda s: s.get("phase") == "Running" and s.get("replicas") == 3, "the job to grow back to 3", timeout=240)
    status = timeline.wait(lambda s: s.get("phase") in ("Succeeded", "Failed"), "the job to finish", timeout=420)
    timeline.stop()
    print("\nelastic timeline (seconds, phase, size, attempt, step, resizes):\n" + timeline.render())

    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    running_sizes = _dedup([size for _, phase, size, *_ in timeline.samples if phase == "Running"])
    assert running_sizes == [2, 1, 3], f"sizes while running: {running_sizes}\n{timeline.render()}"
    assert status["resizes"] == 3, "3 -> 2 (no room), 2 -> 1 (no room after the preemption), 1 -> 3 (room again)"
    assert status["preemptions"] == 1 and (status.get("failures") or 0) == 0, json.dumps(status, indent=1)
    assert status["desiredReplicas"] == 3 and status["replicas"] == 3
    assert status["progress"]["step"] == status["progress"]["totalSteps"]
    assert timeline.worst_regression() <= CHECKPOINT_EVERY, timeline.render()
    resized = [message for _, reason, message in harness.events("elastic") if reason == "Resized"]
    assert len(resized) == 3, resized


def _elastic_job(name: str) -> dict:
    trainer = {
        "model": {"embeddingDim": 16, "tableSizes": TABLES, "bottomMlp": [32, 16], "topMlp": [32, 16]},
        "data": {"source": "synthetic", "synthetic": {"rows": 150_000, "evalRows": 4000, "seed": 7}},
        "training": {"epochs": 2, "globalBatchSize": 768, "precision": "bf16", "backend": "gloo", "device": "cpu",
                     "seed": 3, "optimizer": {"learningRate": 0.01}},
        "checkpoint": {"directory": "/checkpoints/run", "everySteps": CHECKPOINT_EVERY, "keep": 2},
        "reporting": {"progressIntervalSeconds": 0.5, "metricsPort": 0, "logEverySteps": 50},
    }
    spec = {
        "image": "ghcr.io/rectrain/rectrain-trainer:test",
        "elastic": {"minReplicas": 1, "maxReplicas": 3},
        "resources": {"cpu": f"{RANK_CPU_MILLI}m", "memory": "1Gi"},
        "trainer": trainer,
        "runPolicy": {"backoffLimit": 0, "restartBackoff": {"initialSeconds": 0, "maxSeconds": 1}},
        "pod": {"volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}],
                "volumeMounts": [{"name": "checkpoints", "mountPath": "/checkpoints"}]},
    }
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}


class Timeline(threading.Thread):
    """Samples the job's status every 0.2 s: (seconds since start, phase, size, attempt, step, resizes)."""

    def __init__(self, harness, name: str) -> None:
        super().__init__(daemon=True)
        self.harness, self.name, self.start_time = harness, name, time.monotonic()
        self.samples: list[tuple[float, str, int, int, int, int]] = []
        self.latest: dict = {}
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.latest = status = self.harness.status(self.name)
            except Exception:  # noqa: BLE001 - a blip while polling is not the test's subject
                status = {}
            sample = (status.get("phase") or "", status.get("replicas") or 0, status.get("attempt") or 0, _step(status),
                      status.get("resizes") or 0)
            if status and (not self.samples or self.samples[-1][1:] != sample):
                self.samples.append((round(time.monotonic() - self.start_time, 1), *sample))
            time.sleep(0.2)

    def wait(self, check, what: str, timeout: float) -> dict:
        try:
            wait_for(lambda: check(self.latest), timeout=timeout, interval=0.2, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.render()}") from None
        return self.latest

    def stop(self) -> None:
        self.done.set()
        self.join(5)

    def worst_regression(self) -> int:
        """The largest drop of the reported step from the highest step seen before it."""
        highest, worst = 0, 0
        for *_, step, _resizes in self.samples:
            worst, highest = max(worst, highest - step if step else 0), max(highest, step)
        return worst

    def render(self) -> str:
        return "\n".join(f"  {t:7.1f}  {phase:<10} size={size} attempt={attempt} step={step} resizes={resizes}"
                         for t, phase, size, attempt, step, resizes in self.samples)


def _step(status: dict) -> int:
    return (status.get("progress") or {}).get("step") or 0


def _dedup(values: list) -> list:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def harness_pods(core, namespace: str) -> list:
    return core.list_namespaced_pod(namespace).items


def _other_pods_on_node(core, namespace: str) -> list[str]:
    """Pods of other namespaces still on the node (the local cluster's one node)."""
    node = core.list_node().items[0]
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.metadata.name}").items
    return [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods if p.metadata.namespace != namespace]


def _free_milli_cpu(core) -> int:
    """The node's allocatable CPU minus what its unfinished pods request, in millicores."""
    node = core.list_node().items[0]
    free = parse_quantity(node.status.allocatable["cpu"]) * 1000
    for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.metadata.name}").items:
        if pod.status.phase in ("Succeeded", "Failed"):
            continue
        for container in pod.spec.containers:
            requested = ((container.resources and container.resources.requests) or {}).get("cpu")
            free -= (parse_quantity(requested) or Decimal(0)) * 1000 if requested else 0
    return int(free)


def _filler(core, namespace: str, name: str, milli_cpu: int, wait: bool = True) -> None:
    """A pod that only holds `milli_cpu` of the node; its priority is above any rank's."""
    assert milli_cpu > 0, f"the node has too little room for this test ({milli_cpu}m left for a filler)"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"priorityClassName": PRIORITY_CLASS, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "hold", "image": "filler", "command": ["sleep", "infinity"],
                                     "resources": {"requests": {"cpu": f"{milli_cpu}m"}}}]}}
    core.create_namespaced_pod(namespace, body)
    if wait:
        wait_for(lambda: core.read_namespaced_pod(name, namespace).spec.node_name, what=f"filler {name} to be placed")


def _ensure_priority_class(scheduling) -> None:
    from kubernetes import client

    body = client.V1PriorityClass(metadata=client.V1ObjectMeta(name=PRIORITY_CLASS), value=1_000_000,
                                  description="rectrain tests: filler pods that take room from rank pods")
    try:
        scheduling.create_priority_class(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
