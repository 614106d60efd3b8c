"""The local node runs pods for real: own network namespace and IP, peer DNS, service-account tokens,
volumes, kubelet-like status, graceful deletion, and simulated spot reclaims."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from kubernetes import client, watch
from support import wait_for

pytestmark = pytest.mark.cluster

if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
    pytest.skip("exercises the local node agent", allow_module_level=True)


def _pod(name: str, script: str, **spec) -> dict:
    container = {
        "name": "main",
        "image": "rectrain/test:local",
        "command": [sys.executable, "-c", textwrap.dedent(script)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "agent-test"}},
        "spec": {"restartPolicy": "Never", "nodeSelector": {"rectrain.io/local-node": "true"}, "containers": [container], **spec},
    }


def _phase(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    try:
        return core.read_namespaced_pod(name, namespace).status.phase
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _terminated(core, namespace, name):
    statuses = core.read_namespaced_pod(name, namespace).status.container_statuses or []
    return statuses[0].state.terminated if statuses else None


def _gone(core, namespace, name) -> bool:
    return _phase(core, namespace, name) is None


def _logs(local_cluster, namespace, pod) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rectrain_local.cli", "--state-dir", str(local_cluster.state_dir), "logs", "-n", namespace, pod],
        capture_output=True, text=True, check=True,
    )
    return result.stdout


def test_pod_env_exit_codes_and_termination_message(k8s_api, namespace, local_cluster):
    core = client.CoreV1Api(k8s_api)
    ok = _pod(
        "ok",
        """
        import os, socket
        print("ip", os.environ["MY_IP"], "name", os.environ["MY_NAME"], "greeting", os.environ["GREETING"])
        print("hostname", socket.gethostname())
        print("api", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
        """,
        container={
            "env": [
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "WHO", "value": "world"},
                {"name": "GREETING", "value": "hello-$(WHO)"},
            ]
        },
        hostname="ok-host",
    )
    failing = _pod("failing", "import sys; print('the data path /nope does not exist', file=sys.stderr); sys.exit(3)")
    core.create_namespaced_pod(namespace, ok)
    core.create_namespaced_pod(namespace, failing)
    wait_for(lambda: _phase(core, namespace, "ok") == "Succeeded", timeout=60, what="pod ok to succeed")
    wait_for(lambda: _phase(core, namespace, "failing") == "Failed", timeout=60, what="pod failing to fail")

    pod = core.read_namespaced_pod("ok", namespace)
    assert pod.status.pod_ip.startswith("10.213.") and pod.status.host_ip
    assert _terminated(core, namespace, "ok").exit_code == 0
    assert _terminated(core, namespace, "ok").reason == "Completed"
    output = _logs(local_cluster, namespace, "ok")
    assert f"ip {pod.status.pod_ip} name ok greeting hello-world" in output
    assert "hostname ok-host" in output
    assert "api kubernetes.default.svc" in output

    failed = _terminated(core, namespace, "failing")
    assert failed.exit_code == 3 and failed.reason == "Error"
    assert "the data path /nope does not exist" in failed.message


def test_peers_resolve_and_share_port_numbers(k8s_api, namespace):
    """Two pods listen on the same port (own network namespaces) and reach each other by DNS name."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service(
        namespace, {"metadata": {"name": "gang"}, "spec": {"clusterIP": "None", "selector": {"app": "agent-test"}}}
    )
    script = """
        import os, socket, time
        me, peer = os.environ["ME"], os.environ["PEER"]
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 29500)); server.listen(1); server.settimeout(0.2)
        target = f"{peer}.gang.{os.environ['NS']}.svc.cluster.local"
        deadline, said, heard = time.time() + 40, False, False
        while time.time() < deadline and not (said and heard):
            if not said:
                try:
                    socket.create_connection((target, 29500), timeout=1).sendall(me.encode()); said = True
                except OSError:
                    pass
            try:
                conn, _ = server.accept(); print("heard", conn.recv(100).decode(), flush=True); heard = True
            except OSError:
                pass
        raise SystemExit(0 if said and heard else 1)
    """
    for me, peer in (("rank-0", "rank-1"), ("rank-1", "rank-0")):
        env = [{"name": "ME", "value": me}, {"name": "PEER", "value": peer},
               {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
        core.create_namespaced_pod(namespace, _pod(me, script, hostname=me, subdomain="gang", container={"env": env}))
    for name in ("rank-0", "rank-1"):
        wait_for(lambda n=name: _phase(core, namespace, n) in ("Succeeded", "Failed"), timeout=90, what=f"{name} to finish")
        assert _phase(core, namespace, name) == "Succeeded", _terminated(core, namespace, name)


def test_service_account_token_is_the_pods_own_identity(k8s_api, namespace, local_cluster):
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["visible"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}, "data": {"v": "42"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "hidden"}, "data": {"v": "0"}})
    script = """
        from kubernetes import client, config
        config.load_incluster_config()
        core = client.CoreV1Api()
        ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        print("visible", core.read_namespaced_config_map("visible", ns).data["v"])
        try:
            core.read_namespaced_config_map("hidden", ns)
            print("hidden readable")
        except client.ApiException as exc:
            print("hidden", exc.status)
    """
    core.create_namespaced_pod(namespace, _pod("reader", script, serviceAccountName="reader"))
    wait_for(lambda: _phase(core, namespace, "reader") in ("Succeeded", "Failed"), timeout=60, what="reader to finish")
    output = _logs(local_cluster, namespace, "reader")
    assert _phase(core, namespace, "reader") == "Succeeded", output
    assert "visible 42" in output and "hidden 403" in output


def test_graceful_deletion_then_kill(k8s_api, namespace, local_cluster):
    core = client.CoreV1Api(k8s_api)
    polite = """
        import signal, sys, time
        def on_term(*_):
            print("got SIGTERM, saving", flush=True); sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(300)
    """
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
        print("ready", flush=True)
        while True: time.sleep(1)
    """
    core.create_namespaced_pod(namespace, _pod("polite", polite))
    core.create_namespaced_pod(namespace, _pod("stubborn", stubborn))
    for name in ("polite", "stubborn"):
        wait_for(lambda n=name: "ready" in _logs(local_cluster, namespace, n), timeout=60, what=f"{name} to start")
    core.delete_namespaced_pod("polite", namespace, grace_period_seconds=30)
    core.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=2)
    wait_for(lambda: _gone(core, namespace, "polite"), timeout=20, what="polite to be deleted after its SIGTERM exit")
    wait_for(lambda: _gone(core, namespace, "stubborn"), timeout=30, what="stubborn to be killed after its grace period")
    assert "got SIGTERM, saving" in _logs(local_cluster, namespace, "polite")
    assert "ignoring SIGTERM" in _logs(local_cluster, namespace, "stubborn")


def test_spot_reclaim_and_persistent_volume(k8s_api, namespace, local_cluster):
    """A reclaimed pod gets the disruption condition, a SIGTERM notice and is deleted; what it wrote to
    a persistent volume is there for the next pod."""
    core = client.CoreV1Api(k8s_api)
    claim = f"ckpt-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    volume = {"volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": claim}}]}
    mount = {"volumeMounts": [{"name": "ckpt", "mountPath": "/tmp/rectrain-test-ckpt"}]}
    writer = """
        import signal, sys, time
        def on_term(*_):
            open("/tmp/rectrain-test-ckpt/step", "w").write("1200"); print("checkpointed", flush=True); sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(300)
    """
    core.create_namespaced_pod(namespace, _pod("spot-0", writer, container=mount, **volume))
    wait_for(lambda: "ready" in _logs(local_cluster, namespace, "spot-0"), timeout=60, what="spot-0 to start")

    # Watch the pod from before the reclaim, so no state in between is missed.
    seen_conditions: list[str] = []
    deleted_after_notice = threading.Event()

    def observe() -> None:
        stream = watch.Watch().stream(core.list_namespaced_pod, namespace, field_selector="metadata.name=spot-0", timeout_seconds=40)
        for event in stream:
            pod = event["object"]
            seen_conditions.extend(c.reason for c in pod.status.conditions or [] if c.type == "DisruptionTarget")
            if event["type"] == "DELETED":
                deleted_after_notice.set()
                return

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    result = subprocess.run(
        [sys.executable, "-m", "rectrain_local.cli", "--state-dir", str(local_cluster.state_dir),
         "reclaim", "-n", namespace, "--grace-period", "10", "spot-0"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert deleted_after_notice.wait(30), "the reclaimed pod was not deleted"
    observer.join(5)
    assert "TerminationByCloudProvider" in seen_conditions
    assert "checkpointed" in _logs(local_cluster, namespace, "spot-0")

    reader = "print('found step', open('/tmp/rectrain-test-ckpt/step').read())"
    core.create_namespaced_pod(namespace, _pod("spot-0-retry", reader, container=mount, **volume))
    wait_for(lambda: _phase(core, namespace, "spot-0-retry") in ("Succeeded", "Failed"), timeout=60, what="the reader")
    assert "found step 1200" in _logs(local_cluster, namespace, "spot-0-retry")


def test_volume_above_the_node_runtime_does_not_hide_it(k8s_api, namespace, local_cluster):
    """An emptyDir over a directory that holds this node's Python environment (say /tmp, when the
    project was cloned below /tmp) is what a pod sees there, and the pod still runs."""
    import rectrain_local

    shadowed = Path(rectrain_local.__file__).resolve().parents[2].parent  # the repo root's parent
    marker = f"rectrain-agent-test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s_api)
    script = f"""
        import os
        open(os.path.join({str(shadowed)!r}, {marker!r}), "w").write("inside")
        print("entries", sorted(os.listdir({str(shadowed)!r}))[:5])
    """
    core.create_namespaced_pod(namespace, _pod(
        "shadow", script,
        container={"volumeMounts": [{"name": "scratch", "mountPath": str(shadowed)}]},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    ))
    wait_for(lambda: _phase(core, namespace, "shadow") in ("Succeeded", "Failed"), timeout=60, what="the pod to finish")
    assert _phase(core, namespace, "shadow") == "Succeeded", _logs(local_cluster, namespace, "shadow")
    assert not (shadowed / marker).exists(), "the pod wrote through to the node instead of into its emptyDir"


def test_on_failure_restarts_in_place_with_back_off(k8s_api, namespace, local_cluster):
    """restartPolicy OnFailure/Always restarts the container in the same pod, as a kubelet does, instead
    of failing the pod (which would make a ReplicaSet replace it at full speed)."""
    core = client.CoreV1Api(k8s_api)
    script = """
        import os, sys
        runs = "/scratch/runs"
        count = int(open(runs).read()) + 1 if os.path.exists(runs) else 1
        open(runs, "w").write(str(count))
        print("run", count, flush=True)
        sys.exit(3 if count == 1 else 0)
    """
    body = _pod("flaky", script, container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                volumes=[{"name": "scratch", "emptyDir": {}}])
    body["spec"]["restartPolicy"] = "OnFailure"
    core.create_namespaced_pod(namespace, body)
    wait_for(lambda: _phase(core, namespace, "flaky") == "Succeeded", timeout=60, what="the restarted pod to succeed")
    container = core.read_namespaced_pod("flaky", namespace).status.container_statuses[0]
    assert container.restart_count == 1 and container.state.running is None and container.state.terminated.exit_code == 0
    assert container.last_state.terminated.exit_code == 3
    # Like a kubelet, the node keeps the run before the restart apart (kubectl logs --previous: test_node_logs.py).
    assert _logs(local_cluster, namespace, "flaky") == "run 2\n"
