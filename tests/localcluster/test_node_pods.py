"""The node's pure translation of pods: env as a kubelet builds it, commands, volumes, status."""

from __future__ import annotations

from pathlib import Path

import pytest
from rectrain_local.node.pods import (
    SERVICE_ACCOUNT_MOUNT,
    LaunchSpec,
    NodeContext,
    PodSpecError,
    launch_spec,
    pod_dns_names,
    terminated_status,
    termination_message,
)

CTX = NodeContext(
    node_name="node-a", host_ip="10.213.1.1", api_host="kubernetes.default.svc", api_port=6443,
    base_path="/venv/bin:/usr/bin", pod_dir=Path("/state/pods/p"), claim_paths={"ckpt": "/state/pv/ns/ckpt"},
)


def pod(**container) -> dict:
    return {
        "metadata": {"name": "job-0", "namespace": "ml", "uid": "u-1", "labels": {"rank": "0"}},
        "spec": {
            "hostname": "job-0",
            "subdomain": "job",
            "serviceAccountName": "job-trainer",
            "containers": [{"name": "trainer", "image": "ghcr.io/x/rectrain-trainer:1.0", **container}],
            "volumes": [
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}},
            ],
        },
    }


def test_env_resolves_literals_field_refs_and_expansion():
    spec = launch_spec(
        pod(env=[
            {"name": "RANK", "value": "0"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "RANK_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
            {"name": "ADDR", "value": "$(POD_IP):$(PORT)$$"},
        ]),
        CTX, "10.213.1.7", Path("/state/pods/p/serviceaccount"),
    )
    env = spec.env
    assert env["POD_IP"] == "10.213.1.7" and env["NS"] == "ml" and env["RANK_LABEL"] == "0"
    assert env["ADDR"] == "10.213.1.7:$(PORT)$"  # undefined stays as written; $$ escapes
    assert env["KUBERNETES_SERVICE_HOST"] == "kubernetes.default.svc" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["PATH"] == "/venv/bin:/usr/bin" and env["HOSTNAME"] == "job-0"


def test_image_entrypoint_mapping_and_args():
    assert launch_spec(pod(args=["--x", "1"]), CTX, "ip", None).argv == ["rectrain-train", "--x", "1"]
    with pytest.raises(PodSpecError, match=r"spec.containers\[0\].command"):
        launch_spec({**pod(), "spec": {**pod()["spec"], "containers": [{"name": "c", "image": "busybox"}]}}, CTX, "ip", None)


def test_volumes_map_to_node_directories():
    mounts = launch_spec(
        pod(volumeMounts=[
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "ckpt", "mountPath": "/checkpoints", "subPath": "run1"},
        ]),
        CTX, "ip", Path("/state/pods/p/serviceaccount"),
    ).mounts
    by_target = {m.target: m for m in mounts}
    assert by_target["/dev/shm"].source == "tmpfs" and by_target["/dev/shm"].tmpfs_size == "1Gi"
    assert by_target["/scratch"].source == "/state/pods/p/volumes/scratch"
    assert by_target["/checkpoints"].source == "/state/pv/ns/ckpt/run1"
    assert by_target[SERVICE_ACCOUNT_MOUNT].read_only


def test_unknown_volume_and_unbound_claim_are_named():
    with pytest.raises(PodSpecError, match="no volume named 'nope'"):
        launch_spec(pod(volumeMounts=[{"name": "nope", "mountPath": "/x"}]), CTX, "ip", None)
    unbound = pod(volumeMounts=[{"name": "ckpt", "mountPath": "/c"}])
    with pytest.raises(PodSpecError, match="not bound"):
        launch_spec(unbound, NodeContext(**{**CTX.__dict__, "claim_paths": {}}), "ip", None)


def test_launch_spec_round_trips_through_json():
    spec = launch_spec(pod(volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"}]), CTX, "ip", None)
    assert LaunchSpec.from_json(spec.to_json()) == spec


def test_dns_names_follow_hostname_and_subdomain():
    assert pod_dns_names(pod())[0] == "job-0.job.ml.svc.cluster.local"
    bare = pod()
    del bare["spec"]["subdomain"]
    assert pod_dns_names(bare) == ["job-0"]


def test_terminated_status_and_message_policy():
    failed = terminated_status(pod(), "10.0.0.9", "10.0.0.1", "2026-01-01T00:00:00Z", "id", 137, message="", signal=9)
    assert failed["phase"] == "Failed"
    state = failed["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 137 and state["reason"] == "Error" and state["signal"] == 9
    assert terminated_status(pod(), "", "h", None, "id", 0)["phase"] == "Succeeded"
    assert termination_message(pod(), 1, "boom", None) == ""  # default policy File: no log fallback
    assert termination_message(pod(terminationMessagePolicy="FallbackToLogsOnError"), 1, "boom", None) == "boom"
    assert termination_message(pod(terminationMessagePolicy="FallbackToLogsOnError"), 0, "fine", None) == ""
    # A kubelet's limits on the log fallback: the last 80 lines, at most 2048 bytes.
    lines = "\n".join(f"line {i}" for i in range(200))
    tail = termination_message(pod(terminationMessagePolicy="FallbackToLogsOnError"), 1, lines, None)
    assert tail.splitlines() == [f"line {i}" for i in range(120, 200)]
    assert len(termination_message(pod(terminationMessagePolicy="FallbackToLogsOnError"), 1, "x" * 5000, None)) == 2048
