"""Bring your own script: examples/custom-script (plain PyTorch DDP, gloo on CPU) as a RecTrainJob
with 2 pods on the local node. It reports progress and AUC through the rectrain_report SDK (seen in
status while it runs, and in `kubectl get rtj`), and a spot reclaim of one pod resumes it from its
own checkpoint, counted as a preemption."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from jobs_support import ProgressRecorder, kubectl_apply, reclaim
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-script"
EVERY = 50  # checkpoint interval of the run (steps)


def example_objects(namespace_claim: str) -> tuple[dict, dict]:
    """The example's claim and job; the script reaches the pods through a ConfigMap at /app (the
    local node has no image to bake it into) and the job runs shorter, reporting every 0.5 s."""
    claim, job = yaml.safe_load_all((EXAMPLE / "job.yaml").read_text())
    claim["metadata"]["name"] = namespace_claim
    spec = job["spec"]
    spec["args"] = ["--steps", "600", "--batch", "256", "--checkpoint-every", str(EVERY)]
    spec["pod"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = namespace_claim
    spec["pod"]["volumes"].append({"name": "script", "configMap": {"name": "custom-script"}})
    spec["pod"]["volumeMounts"].append({"name": "script", "mountPath": "/app", "readOnly": True})
    spec["pod"]["env"] = [{"name": "RECTRAIN_REPORT_INTERVAL", "value": "0.5"}]
    return claim, job


def kubectl(kubeconfig: str, namespace: str, *args: str) -> str:
    return subprocess.run(["kubectl", "-n", namespace, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "KUBECONFIG": kubeconfig}).stdout


def printed_columns(kubeconfig: str, namespace: str, name: str) -> dict[str, str]:
    header, row = kubectl(kubeconfig, namespace, "get", "rtj", name).splitlines()[:2]
    return dict(zip(header.split(), row.split()))


def test_custom_script_reports_progress_and_resumes_after_a_reclaim(harness, operator, kubeconfig, namespace, local_cluster):
    if local_cluster is None:
        pytest.skip("reclaims go through rectrain-local")
    script = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "custom-script"},
              "data": {"train.py": (EXAMPLE / "train.py").read_text()}}
    claim, job = example_objects("ckpt")
    kubectl_apply(kubeconfig, namespace, script, claim, job)
    recorder = ProgressRecorder(harness, "custom-script")
    recorder.start()

    def progressing_while_running():
        status = harness.status("custom-script")
        return status.get("phase") == "Running" and (status.get("progress") or {}).get("step", 0) >= 3 * EVERY and status
    running = wait_for(progressing_while_running, timeout=240, what="the script's progress in status while it runs")
    assert 0 < running["progress"]["percent"] < 100 and running["metrics"]["auc"] > 0.5, running
    columns = printed_columns(kubeconfig, namespace, "custom-script")
    assert int(columns["STEP"]) >= 3 * EVERY and float(columns["PROGRESS%"]) > 0 and 0.5 < float(columns["AUC"]) <= 1, columns

    victim = harness.pods("custom-script", running.get("attempt", 0))[1].metadata.name
    reclaim(local_cluster, namespace, victim, grace_period=20)
    status = harness.wait_phase("custom-script", "Succeeded", timeout=300)
    recorder.done.set()
    recorder.join(5)

    assert status.get("preemptions") == 1 and (status.get("failures") or 0) == 0, json.dumps(status, indent=1)
    first_attempt = status["attempt"] - 1
    last_before = max(step for attempt, step in recorder.samples if attempt == first_attempt)
    rank0 = harness.pods("custom-script", status["attempt"])[0].metadata.name
    resumed = re.search(r"resumed from step (\d+)", kubectl(kubeconfig, namespace, "logs", rank0))
    assert resumed and int(resumed.group(1)) >= last_before, f"not resumed from its own checkpoint: {recorder.samples}"
    # rr.resumed: the step and the job that wrote it, its own uid (RECTRAIN_JOB_UID), so no warning
    uid = harness.job("custom-script")["metadata"]["uid"]
    assert (status["progress"]["resumedFromStep"], status["progress"]["checkpointJobUid"]) == (int(resumed.group(1)), uid)
    assert harness.condition("custom-script", "CheckpointFromAnotherJob") is None
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 600
    assert status["progress"]["lastCheckpointStep"] == 600 and status["metrics"]["auc"] > 0.8
