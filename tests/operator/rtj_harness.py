"""Test harness for the operator on a real API server: install the CRD, run `rectrain-operator`
as a subprocess, and play the kubelet by patching pod status. Rank pods of test jobs name a
scheduler that does not exist, so no scheduler or node agent ever touches them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from rectrain_api import crd
from rectrain_api import job as api
from support import wait_for

NO_SCHEDULER = "rectrain-test-no-scheduler"
OPERATOR_BIN = Path(sys.executable).with_name("rectrain-operator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_crd(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(crd.render())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        conds = ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(established, timeout=30, what="CRD established")
    # Discovery can lag a moment behind Established.
    custom = client.CustomObjectsApi(api_client)
    wait_for(lambda: custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL) is not None,
             timeout=30, what="CRD served")


class Operator:
    """`rectrain-operator` in a subprocess, stopped by PID."""

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path, extra_args: list[str] | None = None,
                 default_peering: bool = False):
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.extra_args = list(extra_args or [])
        # Tests run it standalone (a killed operator's keep-alive would hold its successor back for the
        # peering lifetime) unless they test peering: their own --peering args, or the default.
        if not default_peering and not any(a.startswith("--peering") for a in self.extra_args):
            self.extra_args.append("--standalone")
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Operator":
        live = free_port()
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(OPERATOR_BIN), "--namespace", self.namespace, "--metrics-port", str(self.metrics_port),
             "--metrics-address", "127.0.0.1", "--liveness-endpoint", f"http://127.0.0.1:{live}/healthz",
             "--resync-seconds", "5", "--workers", "2", *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.proc.poll() is None, f"operator exited: {self.log_path.read_text()[-3000:]}"
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=1) as rsp:
                return rsp.status == 200

        wait_for(healthy, timeout=30, what="operator liveness")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        """Samples by `name{labels}` (labels sorted as Prometheus prints them)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as rsp:
            text = rsp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


class Harness:
    """Jobs and pods in one namespace; plays the kubelet."""

    def __init__(self, api_client: client.ApiClient, namespace: str):
        self.api_client = api_client
        self.ns = namespace
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # ------------------------------------------------------------------------------ jobs

    def job_body(self, name: str, **spec: Any) -> dict[str, Any]:
        spec.setdefault("image", "rectrain:test")
        spec.setdefault("scheduling", {}).setdefault("schedulerName", NO_SCHEDULER)
        spec.setdefault("runPolicy", {}).setdefault("restartBackoff", {"initialSeconds": 0})
        return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}

    def create_job(self, name: str, **spec: Any) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, self.job_body(name, **spec))

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, name, {"spec": spec},
                                                   _content_type="application/merge-patch+json")

    def wait_phase(self, name: str, phase: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        def check():
            st = self.status(name)
            return st if st.get("phase") == phase and all(st.get(k) == v for k, v in fields.items()) else None

        try:
            return wait_for(check, timeout=timeout, what=f"{name} phase {phase} {fields}")
        except AssertionError as exc:
            # The rank pods' phases tell a stuck operator (pods ended, job not) from stuck pods.
            pods = {p.metadata.name: p.status.phase for p in self.pods(name)}
            raise AssertionError(f"{exc}; pods: {pods}; status: {self.status(name)}") from None

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        evs = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason, e.message) for e in sorted(evs, key=lambda e: e.metadata.creation_timestamp)]

    # ------------------------------------------------------------------------------ pods

    def pods(self, job: str, attempt: int | None = None) -> list[Any]:
        sel = f"{api.LABEL_JOB_NAME}={job}" + (f",{api.LABEL_ATTEMPT}={attempt}" if attempt is not None else "")
        pods = [p for p in self.core.list_namespaced_pod(self.ns, label_selector=sel).items
                if api.LABEL_RANK in p.metadata.labels]  # not an elastic job's capacity probes
        return sorted(pods, key=lambda p: int(p.metadata.labels[api.LABEL_RANK]))

    def wait_pods(self, job: str, count: int, attempt: int | None = None, timeout: float = 30) -> list[Any]:
        return wait_for(lambda: (lambda ps: ps if len(ps) == count else None)(self.pods(job, attempt)),
                        timeout=timeout, what=f"{count} pods of {job} attempt {attempt}")

    def _status(self, pod: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(pod, self.ns, {"status": status})

    def run(self, pod: str) -> None:
        self._status(pod, {"phase": "Running", "containerStatuses": [
            {"name": "trainer", "image": "rectrain:test", "imageID": "", "ready": True, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})

    def run_all(self, job: str, attempt: int) -> None:
        for p in self.pods(job, attempt):
            self.run(p.metadata.name)

    def exit(self, pod: str, code: int, reason: str | None = None) -> None:
        self._status(pod, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": "trainer", "image": "rectrain:test", "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                                      "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}}]})

    def evict(self, pod: str) -> None:
        self._status(pod, {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."})

    def delete(self, pod: str) -> None:
        self.core.delete_namespaced_pod(pod, self.ns, grace_period_seconds=0)
