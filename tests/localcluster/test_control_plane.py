"""The ground is real: CRDs with status, scheduling onto a Node, garbage collection, kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from kubernetes import client
from support import is_gone, wait_for

pytestmark = pytest.mark.cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.groundtest.rectrain.io"},
    "spec": {
        "group": "groundtest.rectrain.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_custom_resource_status_subresource(k8s_api, namespace):
    extensions = client.ApiextensionsV1Api(k8s_api)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as exc:
        assert exc.status == 409, exc
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (extensions.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"]).status.conditions or [])
        ),
        what="the CRD to be Established",
    )
    custom = client.CustomObjectsApi(k8s_api)
    args = ("groundtest.rectrain.io", "v1", namespace, "widgets")
    body = {"apiVersion": "groundtest.rectrain.io/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}
    wait_for(lambda: custom.create_namespaced_custom_object(*args, body), what="creating the first Widget")

    # The schema is enforced by the real API server.
    bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    with pytest.raises(client.ApiException) as rejected:
        custom.create_namespaced_custom_object(*args, bad)
    assert rejected.value.status == 422 and "spec.size" in rejected.value.body

    # Status goes only through the status subresource: a status in a main-resource patch is dropped.
    custom.patch_namespaced_custom_object(*args, "w1", {"status": {"phase": "Ignored"}})
    assert "status" not in custom.get_namespaced_custom_object(*args, "w1")
    custom.patch_namespaced_custom_object_status(*args, "w1", {"status": {"phase": "Ready"}})
    stored = custom.get_namespaced_custom_object(*args, "w1")
    assert stored["status"] == {"phase": "Ready"}
    assert stored["spec"] == {"size": 3}


def _register_node(core: client.CoreV1Api, name: str) -> None:
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={"ground-test": name})))
    core.patch_node(name, {"spec": {"taints": None}})
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "20"}
    core.patch_node_status(
        name,
        {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "GroundTest", "message": "registered by a test"}],
            }
        },
    )


def test_pod_is_scheduled_onto_a_registered_node(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    node = f"ground-{uuid.uuid4().hex[:6]}"
    _register_node(core, node)
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "nodeSelector": {"ground-test": node},
                "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "60"], "resources": {"requests": {"cpu": "1"}}}],
            },
        }
        core.create_namespaced_pod(namespace, pod)
        bound = wait_for(lambda: core.read_namespaced_pod("sleeper", namespace).spec.node_name, what="the scheduler to bind the pod")
        assert bound == node
        scheduled = [c for c in core.read_namespaced_pod("sleeper", namespace).status.conditions if c.type == "PodScheduled"]
        assert scheduled and scheduled[0].status == "True"
        # No kubelet runs on this node: finish the deletion ourselves, as a kubelet would.
        core.delete_namespaced_pod("sleeper", namespace, grace_period_seconds=0)
    finally:
        core.delete_node(node)


def test_owner_deletion_garbage_collects_children(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"role": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "child", "ownerReferences": [reference]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})
    core.delete_namespaced_config_map("owner", namespace)

    wait_for(lambda: is_gone(lambda: core.read_namespaced_config_map("child", namespace)), timeout=60, what="the controller-manager to garbage-collect the child")
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def test_service_accounts_and_tokens_are_issued(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), what="the default ServiceAccount")
    token = core.create_namespaced_service_account_token(
        "default", namespace, {"spec": {"audiences": None, "expirationSeconds": 600}}
    )
    assert token.status.token.count(".") == 2  # a signed JWT
    review = client.AuthenticationV1Api(k8s_api).create_token_review({"spec": {"token": token.status.token}})
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"


def test_kubectl_and_version(kubeconfig):
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    namespaces = subprocess.run(["kubectl", "get", "ns", "-o", "json"], env=env, capture_output=True, text=True, check=True)
    names = {item["metadata"]["name"] for item in json.loads(namespaces.stdout)["items"]}
    assert {"default", "kube-system"} <= names
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
        return
    version = subprocess.run(["kubectl", "version", "-o", "json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == "v1.20.2"
