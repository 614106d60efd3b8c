"""A RecTrainJob end to end: kubectl apply -> operator -> rank pods run by the node agent -> the
trainer trains for real and reports into the job's status. Spot reclaims and application failures
go through the same paths as on a cloud cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from jobs_support import ProgressRecorder, job_manifest, kubectl_apply, trainer
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_job_trains_to_succeeded_with_progress(harness, operator, kubeconfig, namespace):
    """2 pods x 2 rank processes (torchrun in each pod): 4 ranks train together."""
    rows, batch = 120_000, 512
    manifest = job_manifest("train", trainer(rows=rows, batch=batch))
    manifest["spec"]["procsPerReplica"] = 2
    kubectl_apply(kubeconfig, namespace, manifest)
    recorder = ProgressRecorder(harness, "train")
    recorder.start()
    status = harness.wait_phase("train", "Succeeded", timeout=300)
    recorder.done.set()
    recorder.join(5)

    steps = [step for _, step in recorder.samples]
    assert len(set(steps)) >= 2, f"progress was not seen moving: {recorder.samples}"
    assert steps == sorted(steps), f"progress went backwards without a restart: {recorder.samples}"
    progress, metrics = status["progress"], status["metrics"]
    assert progress["step"] == progress["totalSteps"] and progress["percent"] == pytest.approx(100)
    assert 0.6 < metrics["auc"] <= 1.0, metrics
    assert (status.get("failures") or 0) == 0 and (status.get("preemptions") or 0) == 0
    assert progress["totalSteps"] <= rows // (batch * 4) + 1, f"fewer than 4 ranks shared the data: {progress}"
    for pod, ranks in (("train-0-a0", (0, 1)), ("train-1-a0", (2, 3))):
        log = kubectl(kubeconfig, namespace, "logs", pod)
        for rank in ranks:
            assert f"[rank{rank}]:" in log and f"joined: rank {rank} of 4" in log, f"{pod} lacks rank {rank}:\n{log[-2000:]}"


def test_spot_reclaim_resumes_from_checkpoint(harness, operator, kubeconfig, namespace, local_cluster):
    if local_cluster is None:
        pytest.skip("reclaims go through rectrain-local")
    every = 20
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    kubectl_apply(kubeconfig, namespace, claim, job_manifest("spot", trainer(rows=300_000, batch=512, checkpoint_every=every), claim="ckpt"))
    recorder = ProgressRecorder(harness, "spot")
    recorder.start()
    wait_for(lambda: (harness.status("spot").get("progress") or {}).get("step", 0) >= 3 * every, timeout=240,
             what="training to pass a few checkpoints")
    before = harness.status("spot")
    victim = harness.pods("spot", before.get("attempt", 0))[1].metadata.name
    result = subprocess.run(
        [sys.executable, "-m", "rectrain_local.cli", "--state-dir", str(local_cluster.state_dir),
         "reclaim", "-n", namespace, "--grace-period", "20", victim],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    status = harness.wait_phase("spot", "Succeeded", timeout=420)
    recorder.done.set()
    recorder.join(5)

    assert status.get("preemptions") == 1, json.dumps(status, indent=1)
    assert (status.get("failures") or 0) == 0, "a preemption must not consume backoffLimit"
    first_attempt = status.get("attempt", 0) - 1
    last_before = max(step for attempt, step in recorder.samples if attempt == first_attempt)
    after = [step for attempt, step in recorder.samples if attempt > first_attempt]
    assert after, f"no progress seen after the restart: {recorder.samples}"
    assert min(after) >= last_before - every, f"resumed too far back: {last_before} -> {min(after)}; {recorder.samples}"
    assert status["progress"]["step"] == status["progress"]["totalSteps"]
    assert status["metrics"]["auc"] > 0.6


def test_application_failure_fails_after_backoff_limit(harness, operator, kubeconfig, namespace):
    bad_data = {"source": "criteo-tsv", "paths": ["/nonexistent/criteo/day_*.tsv"]}
    kubectl_apply(kubeconfig, namespace, job_manifest("broken", trainer(rows=1000, batch=64, data=bad_data), backoff_limit=1))
    status = harness.wait_phase("broken", "Failed", timeout=240)
    assert status.get("failures") == 2, "backoffLimit 1 allows one retry: two failures in all"
    assert (status.get("preemptions") or 0) == 0
    failed = harness.condition("broken", "Failed")
    assert failed and failed["status"] == "True"
    assert "/nonexistent/criteo" in json.dumps(status["lastFailure"]), f"the trainer's message is not in status: {status}"
    wait_for(lambda: any("/nonexistent/criteo" in message for _, _, message in harness.events("broken")),
             what="an Event carrying the trainer's message")


def test_a_crashing_local_rank_fails_the_job_naming_its_global_rank(harness, operator, kubeconfig, namespace):
    """Global rank 3 (pod 1, local rank 1) dies at start-up with exit code 7, as a user's bug on one
    rank would: the pod exits 7 and the job's lastFailure names pod rank 1 and global rank 3."""
    crash = "import os\nif 'LOCAL_RANK' in os.environ and os.environ.get('RANK') == os.environ.get('CRASH_RANK'):\n    os._exit(7)\n"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "crash"}, "data": {"sitecustomize.py": crash}}
    manifest = job_manifest("crash", trainer(rows=4000, batch=64), backoff_limit=0)
    manifest["spec"].update(procsPerReplica=2, pod={
        "volumes": [{"name": "crash", "configMap": {"name": "crash"}}],
        "volumeMounts": [{"name": "crash", "mountPath": "/crash", "readOnly": True}],
        "env": [{"name": "PYTHONPATH", "value": "/crash"}, {"name": "CRASH_RANK", "value": "3"}],
    })
    kubectl_apply(kubeconfig, namespace, config_map, manifest)
    status = harness.wait_phase("crash", "Failed", timeout=240)
    last = status["lastFailure"]
    assert (last["cause"], last["rank"], last["exitCode"]) == ("failure", 1, 7), json.dumps(status, indent=1)
    assert "global rank 3 (local rank 1) exited with code 7" in last["message"], last


def kubectl(kubeconfig: str, namespace: str, *args: str) -> str:
    result = subprocess.run(["kubectl", "-n", namespace, *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KUBECONFIG": kubeconfig}, check=True)
    return result.stdout
