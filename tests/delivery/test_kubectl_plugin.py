"""`kubectl rectrain` (the kubectl-rectrain executable) against the local control plane: submit, list,
watch, describe and logs, with a real rectrain-operator; the node agent runs a real trainer for the
end-to-end case."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from delivery_support import BIN, run, tool

from rectrain_api import job as api

pytestmark = pytest.mark.cluster

PLUGIN = str(BIN / "kubectl-rectrain")


@pytest.fixture
def operator(kubeconfig, k8s_api, namespace, tmp_path):
    from rtj_harness import Operator, install_crd

    install_crd(k8s_api)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    yield op
    op.kill()


def plugin(kubeconfig: str, *args: str, check: bool = True, timeout: float = 120):
    return run([PLUGIN, *args], kubeconfig=kubeconfig, check=check, timeout=timeout)


def manifest(name: str, **spec) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"image": "ghcr.io/rectrain/rectrain-trainer:test", **spec}}


def test_submit_describe_and_logs_with_restarts_and_preemptions(kubeconfig, k8s_api, namespace, operator, tmp_path):
    """Pods here name a scheduler that does not exist; the test plays the kubelet (rtj_harness)."""
    from rtj_harness import NO_SCHEDULER, Harness

    h = Harness(k8s_api, namespace)
    body = manifest("desc", replicas=2, scheduling={"schedulerName": NO_SCHEDULER},
                    runPolicy={"backoffLimit": 3, "restartBackoff": {"initialSeconds": 0}})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))

    out = plugin(kubeconfig, "submit", str(path), "-n", namespace).stdout
    assert f"rectrainjob.rectrain.io/desc created (namespace {namespace})" in out
    assert h.job("desc")["spec"]["replicas"] == 2
    # Submitting again updates the job.
    body["spec"]["runPolicy"]["backoffLimit"] = 4
    path.write_text(yaml.safe_dump(body))
    assert "desc configured" in plugin(kubeconfig, "submit", str(path), "-n", namespace).stdout
    assert h.job("desc")["spec"]["runPolicy"]["backoffLimit"] == 4

    # Not a RecTrainJob; invalid spec: refused with a clear message, nothing created.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}))
    result = plugin(kubeconfig, "submit", str(bad), "-n", namespace, check=False)
    assert result.returncode == 1 and "not a rectrain.io/v1alpha1 RecTrainJob: v1/ConfigMap" in result.stderr
    bad.write_text(yaml.safe_dump(manifest("broken", replicas=0)))
    result = plugin(kubeconfig, "submit", str(bad), "-n", namespace, check=False)
    assert result.returncode == 1 and "spec.replicas" in result.stderr, result.stderr

    # A preemption, then an application failure: two restarts, told apart.
    pods = h.wait_pods("desc", 2, attempt=0)
    h.run_all("desc", 0)
    h.wait_phase("desc", "Running")
    h.evict(pods[1].metadata.name)
    h.wait_pods("desc", 2, attempt=1, timeout=30)
    h.run_all("desc", 1)
    h.wait_phase("desc", "Running", attempt=1)
    h.custom.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.PLURAL, "desc",
        {"status": {"progress": {"epoch": 1, "step": 1200, "totalSteps": 5000, "percent": 24.0, "loss": 0.4567,
                                 "samplesPerSecond": 51234.0, "etaSeconds": 310.0}}},
        _content_type="application/merge-patch+json")
    h.exit(h.pods("desc", 1)[0].metadata.name, 3)
    h.wait_pods("desc", 2, attempt=2, timeout=30)

    text = plugin(kubeconfig, "describe", "desc", "-n", namespace).stdout
    assert "Phase:" in text and f"Namespace:    {namespace}" in text
    assert "Restarts:     2 (failures 1 of backoffLimit 4, preemptions 1 of maxPreemptions unlimited)" in text
    assert "Last failure: failure of rank 0" in text and "exit 3" in text
    assert "step 1200/5000 (24.0%), loss 0.4567, 51,234 samples/s, eta 310s" in text
    conditions = text.split("Conditions:")[1].split("Pods:")[0]
    assert "Created" in conditions and "Restarting" in conditions
    pods_section = text.split("Pods:")[1].split("Events:")[0]
    assert "desc-0-a2" in pods_section and "desc-1-a2" in pods_section
    events = text.split("Events:")[1]
    # The operator's Warning Events for the two gang restarts: reason Preempted for the eviction, then
    # ApplicationFailed for the exit code, each with its restart number (gang_failures.restart_gang).
    restarting = r"; restarting all 2 ranks in \S+s \(restart {}\)$"
    preempted = rf"^  Warning +Preempted +.* ago  pod {pods[1].metadata.name}: Evicted: .*" + restarting.format(1)
    failed = r"^  Warning +ApplicationFailed +.* ago  .*" + restarting.format(2)
    assert re.search(preempted, events, re.MULTILINE), events
    assert re.search(failed, events, re.MULTILINE), events

    # Logs: these pods never ran anywhere, so neither the API nor a local node has their output.
    result = plugin(kubeconfig, "logs", "desc", "--rank", "1", "-n", namespace, check=False)
    assert result.returncode == 1 and f"cannot serve the log of pod {namespace}/desc-1-a2" in result.stderr
    result = plugin(kubeconfig, "logs", "desc", "--rank", "5", "-n", namespace, check=False)
    assert result.returncode == 2 and "ranks 0..1" in result.stderr
    result = plugin(kubeconfig, "describe", "nope", "-n", namespace, check=False)
    assert result.returncode == 3 and "not found" in result.stderr


TINY_TRAINER = {
    "model": {"embeddingDim": 8, "tableSizes": [100] * 26, "bottomMlp": [16, 8], "topMlp": [16]},
    "data": {"source": "synthetic", "synthetic": {"rows": 6000, "evalRows": 1000, "seed": 7}},
    "training": {"epochs": 1, "batchSize": 500, "backend": "gloo", "device": "cpu", "dataLoaderWorkers": 0},
    "reporting": {"progressIntervalSeconds": 0.5, "metricsPort": 0, "logEverySteps": 4},
}


@pytest.mark.slow
@pytest.mark.e2e
def test_submit_watch_list_logs_of_a_real_training_run(kubeconfig, k8s_api, namespace, operator, tmp_path, local_cluster):
    if local_cluster is not None and os.geteuid() != 0:
        pytest.skip("the local node agent needs root to run pods")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest("tiny", replicas=1, resources={"cpu": "500m", "memory": "1Gi"}, trainer=TINY_TRAINER,
                                            runPolicy={"backoffLimit": 0})))
    result = plugin(kubeconfig, "submit", str(path), "-n", namespace, "--watch", "--no-bar", "--timeout", "150", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].strip().startswith("AllRanksSucceeded:"), result.stdout  # the final condition
    final = lines[-2]
    assert final.startswith("tiny: Succeeded step 12/12") and " auc 0." in final, result.stdout

    # Through kubectl's plugin mechanism (kubectl-rectrain on PATH).
    listing = run([tool("kubectl"), "rectrain", "list", "-n", namespace], kubeconfig=kubeconfig).stdout
    row = next(line for line in listing.splitlines() if " tiny " in line)
    assert "Succeeded" in row and "100.0%" in row

    logs = plugin(kubeconfig, "logs", "tiny", "--rank", "0", "-n", namespace).stdout
    assert "rank=0" in logs and "step" in logs
    tail = plugin(kubeconfig, "logs", "tiny", "-n", namespace, "--tail", "2").stdout
    assert len(tail.strip().splitlines()) <= 2 and tail.strip().splitlines()[-1] in logs

    text = plugin(kubeconfig, "describe", "tiny", "-n", namespace).stdout
    assert "Phase:        Succeeded" in text and "Metrics:      auc 0." in text
    assert "AllRanksSucceeded" in text


def test_describe_shows_only_this_jobs_events_not_an_earlier_one_of_the_same_name(kubeconfig, k8s_api, namespace, tmp_path):
    """A job deleted and created again under its name: the earlier job's Events (same name, its own
    uid) stay in the namespace for an hour; describe must not show them as this job's."""
    from kubernetes import client

    from rtj_harness import install_crd

    install_crd(k8s_api)
    custom, core = client.CustomObjectsApi(k8s_api), client.CoreV1Api(k8s_api)
    job = custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL,
                                                 manifest("again", suspend=True))

    def event(name: str, uid: str, message: str) -> None:
        core.create_namespaced_event(namespace, {
            "metadata": {"name": name}, "type": "Normal", "reason": "Test", "message": message,
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "again", "namespace": namespace, "uid": uid},
        })

    event("again.old", "00000000-0000-0000-0000-000000000001", "from the earlier job")
    event("again.new", job["metadata"]["uid"], "from this job")
    out = plugin(kubeconfig, "describe", "again", "-n", namespace).stdout
    assert "from this job" in out and "from the earlier job" not in out, out
