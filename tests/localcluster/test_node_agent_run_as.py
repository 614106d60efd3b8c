"""When the local node cannot honour a pod's runAsUser (its Python lives below a directory that uid
cannot read), it says so once, on the Node, not on every pod."""

from __future__ import annotations

import os
import sys

import pytest
from kubernetes import client
from support import wait_for

pytestmark = pytest.mark.cluster

if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
    pytest.skip("exercises the local node agent", allow_module_level=True)


def _pod(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "nodeSelector": {"rectrain.io/local-node": "true"},
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [{"name": "main", "image": "rectrain/test:local", "command": [sys.executable, "-c", "print('ran')"]}]},
    }


def test_run_as_user_not_honoured_is_one_node_notice(k8s_api, namespace, local_cluster):
    from rectrain_local.node.worker import _can_run_as

    if os.geteuid() != 0:
        pytest.skip("the local node agent needs root to run pods")
    if _can_run_as(1000, 1000):
        pytest.skip("this node honours uid 1000: nothing to notice")
    core = client.CoreV1Api(k8s_api)
    for name in ("one", "two"):
        core.create_namespaced_pod(namespace, _pod(name))
    for name in ("one", "two"):
        wait_for(lambda n=name: core.read_namespaced_pod(n, namespace).status.phase == "Succeeded", timeout=60,
                 what=f"pod {name} to run (as the agent's user)")

    def notices():
        events = core.list_namespaced_event("default", field_selector="involvedObject.kind=Node,reason=RunAsUserNotHonored").items
        return [e for e in events if "uid 1000" in e.message]

    (notice,) = wait_for(notices, timeout=30, what="the node's RunAsUserNotHonored notice")
    assert notice.type == "Warning" and "run as the agent's user" in notice.message
    pod_events = core.list_namespaced_event(namespace).items
    assert not [e for e in pod_events if e.reason == "RunAsUserNotHonored"], "no per-pod notice"
