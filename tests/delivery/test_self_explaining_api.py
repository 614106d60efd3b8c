"""The API explains itself on a real 1.20 API server: `kubectl explain` shows every field's type,
allowed values and default; `kubectl get rtj -o wide` shows why a job failed; and `kubectl rectrain`
suspends, resumes and deletes jobs, with clear messages for a job that is not there."""

from __future__ import annotations

import pytest
from delivery_support import BIN, run, tool
from support import wait_for

pytestmark = pytest.mark.cluster

PLUGIN = str(BIN / "kubectl-rectrain")


def kubectl(kubeconfig: str, *args: str, check: bool = True):
    return run([tool("kubectl"), *args], kubeconfig=kubeconfig, check=check)


def plugin(kubeconfig: str, *args: str):
    return run([PLUGIN, *args], kubeconfig=kubeconfig, check=False)


def test_kubectl_explain_shows_types_allowed_values_and_defaults(kubeconfig, k8s_api):
    from rtj_harness import install_crd

    install_crd(k8s_api)

    def explain(field: str):
        # The API server republishes its OpenAPI a moment after the CRD changes.
        text = kubectl(kubeconfig, "explain", f"rtj.{field}", check=False).stdout
        return text if "FIELD:" in text or "FIELDS:" in text else None

    max_steps = wait_for(lambda: explain("spec.trainer.training.maxSteps"), timeout=60, what="kubectl explain maxSteps")
    # An optional (X | None) field keeps its type: OpenAPI v2 drops the type of a `nullable` one (`<>`).
    assert "maxSteps <integer>" in max_steps and "empty: run all epochs. At least 1." in " ".join(max_steps.split())
    batch = " ".join(explain("spec.trainer.training.batchSize").split())
    assert "batchSize <integer>" in batch and "At least 1. Default: 2048." in batch
    precision = " ".join(explain("spec.trainer.training.precision").split())
    assert "One of: fp32," in precision and "Default: fp32." in precision
    assert "procsPerReplica <integer>" in explain("spec.procsPerReplica")
    assert "cpu <string>" in explain("spec.resources.cpu")
    # A nullable object lost its fields too; status.lastFailure now lists them.
    last_failure = explain("status.lastFailure")
    assert "cause\t<string> -required-" in last_failure and "exitCode\t<integer>" in last_failure
    # Untyped are only the free-form core/v1 objects (x-kubernetes-preserve-unknown-fields, which OpenAPI
    # v2 cannot type either); their descriptions name the Kubernetes type.
    untyped = {line.split()[0] for line in kubectl(kubeconfig, "explain", "rtj", "--recursive").stdout.splitlines() if "<>" in line}
    assert untyped == {"valueFrom", "securityContext"}, untyped


def test_wide_shows_why_and_plugin_suspends_resumes_and_deletes(kubeconfig, namespace, harness, operator):
    h = harness
    # fp16 on a CPU job: the schema accepts it, the operator fails it (no admission webhook here).
    h.create_job("half", trainer={"training": {"precision": "fp16"}})
    h.wait_phase("half", "Failed")

    def wide_row():
        text = kubectl(kubeconfig, "get", "rtj", "half", "-n", namespace, "-o", "wide").stdout
        header, row = text.splitlines()[:2]
        return (header, row) if "InvalidSpec" in row else None

    header, row = wait_for(wide_row, timeout=30, what="-o wide to show the reason")
    assert header.split()[:2] == ["NAME", "PHASE"] and "REASON" in header.split() and "MESSAGE" in header.split()
    assert "Failed" in row and "spec.trainer.training.precision: fp16 needs GPUs" in row
    assert "InvalidSpec" not in kubectl(kubeconfig, "get", "rtj", "half", "-n", namespace).stdout, "-o wide only"

    # A finished job is neither suspended nor resumed.
    refused = plugin(kubeconfig, "suspend", "half", "-n", namespace)
    assert refused.returncode == 1 and "cannot suspend it: it has Failed" in refused.stderr

    h.create_job("pause", replicas=2)
    h.wait_pods("pause", 2, attempt=0)
    out = plugin(kubeconfig, "suspend", "pause", "-n", namespace)
    assert out.returncode == 0 and f"rectrainjob.rectrain.io/pause suspended (namespace {namespace})" in out.stdout, out.stderr
    assert h.job("pause")["spec"]["runPolicy"]["suspend"] is True
    h.wait_phase("pause", "Suspended")
    wait_for(lambda: not h.pods("pause"), what="the suspended job's pods to go")
    assert "already suspended" in plugin(kubeconfig, "suspend", "pause", "-n", namespace).stdout

    out = plugin(kubeconfig, "resume", "pause", "-n", namespace)
    assert out.returncode == 0 and "pause resumed" in out.stdout, out.stderr
    h.wait_pods("pause", 2, attempt=1)
    assert h.job("pause")["spec"]["runPolicy"]["suspend"] is False
    assert "already not suspended" in plugin(kubeconfig, "resume", "pause", "-n", namespace).stdout

    # What makes "its pods go with it" true: the job owns them (the garbage collector does the rest).
    uid = h.job("pause")["metadata"]["uid"]
    assert all(any(ref.uid == uid for ref in p.metadata.owner_references or []) for p in h.pods("pause"))
    out = plugin(kubeconfig, "delete", "pause", "-n", namespace, "--wait", "--timeout", "30")
    assert out.returncode == 0 and "rectrainjob.rectrain.io/pause deleted" in out.stdout, out.stderr
    assert not any(j["metadata"]["name"] == "pause" for j in h.custom.list_namespaced_custom_object(
        "rectrain.io", "v1alpha1", namespace, "rectrainjobs")["items"])

    for command in ("delete", "suspend", "resume"):
        missing = plugin(kubeconfig, command, "pause", "-n", namespace)
        assert missing.returncode == 3, (command, missing.stdout, missing.stderr)
        assert f"{namespace}/pause: no RecTrainJob of that name" in missing.stderr, (command, missing.stderr)
