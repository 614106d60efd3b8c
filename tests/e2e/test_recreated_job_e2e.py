"""A RecTrainJob deleted and created again under the same name, on the same checkpoint volume, resumes
the first job's run, and says so: the trainer reads the first job's uid from the checkpoint (the
operator gave each job its own RECTRAIN_JOB_UID) and reports it, and the operator sets condition
CheckpointFromAnotherJob and posts a Warning Event. End to end: kubectl, operator, node agent,
trainer, status."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from jobs_support import job_manifest, kubectl_apply, trainer
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "again"


def test_a_recreated_job_resumes_the_old_checkpoint_and_warns(harness, operator, kubeconfig, namespace):
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt-again"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    manifest = job_manifest(NAME, trainer(rows=40_000, batch=512, checkpoint_every=10), claim="ckpt-again")
    kubectl_apply(kubeconfig, namespace, claim, manifest)
    first = harness.wait_phase(NAME, "Succeeded", timeout=300)
    first_uid, total = harness.job(NAME)["metadata"]["uid"], first["progress"]["totalSteps"]
    assert "resumedFromStep" not in first["progress"] and harness.condition(NAME, "CheckpointFromAnotherJob") is None

    subprocess.run(["kubectl", "delete", "rtj", NAME, "-n", namespace, "--wait=true"], check=True, capture_output=True,
                   env={**os.environ, "KUBECONFIG": kubeconfig})
    wait_for(lambda: not harness.pods(NAME), timeout=120, what="the first job's pods to be collected")
    kubectl_apply(kubeconfig, namespace, manifest)
    second = harness.wait_phase(NAME, "Succeeded", timeout=300)

    assert harness.job(NAME)["metadata"]["uid"] != first_uid
    progress = second["progress"]
    assert (progress["resumedFromStep"], progress["checkpointJobUid"]) == (total, first_uid), json.dumps(second, indent=1)
    condition = harness.condition(NAME, "CheckpointFromAnotherJob")
    assert condition and condition["status"] == "True" and first_uid in condition["message"]
    warnings = wait_for(lambda: [e for e in harness.events(NAME) if e[1] == "CheckpointFromAnotherJob"] or None,
                        timeout=30, what="the CheckpointFromAnotherJob Event")
    assert len(warnings) == 1 and warnings[0][0] == "Warning" and f"step {total}" in warnings[0][2]
