"""`kubectl logs` on the local node: the API server proxies to the node agent's kubelet endpoint."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from kubernetes import client
from support import wait_for

pytestmark = pytest.mark.cluster

if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
    pytest.skip("exercises the local node agent", allow_module_level=True)

KUBECTL = os.path.join(os.path.dirname(sys.executable), "kubectl")


def _pod(name: str, script: str, restart: str = "Never") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart, "nodeSelector": {"rectrain.io/local-node": "true"},
            "containers": [{"name": "main", "image": "rectrain/test:local",
                            "command": [sys.executable, "-u", "-c", textwrap.dedent(script)],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def kubectl_logs(kubeconfig: str, namespace: str, *args: str, timeout: float = 60) -> str:
    result = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, "-n", namespace, "logs", *args],
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _phase(core, namespace, name):
    return core.read_namespaced_pod(name, namespace).status.phase


def test_kubectl_logs_follow_tail_and_limit(k8s_api, kubeconfig, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, _pod("talker", """
        import time
        for i in range(1, 9):
            print(f"line {i}", flush=True)
            time.sleep(0.25)
        """))
    wait_for(lambda: _phase(core, namespace, "talker") in ("Running", "Succeeded"), timeout=60, what="talker to start")
    # -f streams while the container runs and returns once it has exited.
    followed = kubectl_logs(kubeconfig, namespace, "-f", "talker")
    assert followed.splitlines() == [f"line {i}" for i in range(1, 9)]
    wait_for(lambda: _phase(core, namespace, "talker") == "Succeeded", timeout=30, what="talker to succeed")
    assert kubectl_logs(kubeconfig, namespace, "talker", "--tail=2").splitlines() == ["line 7", "line 8"]
    assert kubectl_logs(kubeconfig, namespace, "talker", "--tail=0") == ""
    assert kubectl_logs(kubeconfig, namespace, "talker", "--limit-bytes=9") == "line 1\nli"
    # The Python client goes the same way (what the kubectl-rectrain plugin uses).
    assert core.read_namespaced_pod_log("talker", namespace, tail_lines=1) == "line 8\n"


def test_kubectl_logs_previous_after_an_in_place_restart(k8s_api, kubeconfig, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, _pod("flaky", """
        import os, sys, time
        if not os.path.exists("/scratch/ran"):
            open("/scratch/ran", "w").close()
            print("first run fails")
            sys.exit(1)
        print("second run works")
        time.sleep(60)
        """, restart="OnFailure"))

    def restarted() -> bool:
        statuses = core.read_namespaced_pod("flaky", namespace).status.container_statuses or []
        return bool(statuses) and statuses[0].restart_count == 1 and statuses[0].state.running is not None

    wait_for(restarted, timeout=90, what="flaky to restart once")
    wait_for(lambda: kubectl_logs(kubeconfig, namespace, "flaky") == "second run works\n", timeout=30,
             what="the second run's log")
    assert kubectl_logs(kubeconfig, namespace, "flaky", "--previous") == "first run fails\n"


def test_kubelet_endpoint_refuses_clients_other_than_the_api_server(k8s_api, namespace, local_cluster):
    node = client.CoreV1Api(k8s_api).read_node("rectrain-local-node")
    address = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    assert port > 0
    context = ssl.create_default_context(cafile=str(local_cluster.pki_dir / "ca.crt"))  # verifies the node's certificate
    base = f"https://{address}:{port}"
    with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=10) as rsp:
        assert rsp.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/containerLogs/{namespace}/any/main", context=context, timeout=10)
    assert refused.value.code == 403
