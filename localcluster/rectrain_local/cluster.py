"""The local control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Everything lives under one state directory (by default `.rectrain/` in the repo):
    kubeconfig              the admin kubeconfig (part of the contract)
    cluster/state.json      ports and the PID + start time of every process started
    cluster/pki/            CA, serving cert, service-account keys, admin token
    cluster/etcd/           etcd's data (kept across down/up; wiped by `up --fresh`)
    cluster/logs/<name>.log one log per component
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import build as control_plane_build
from .pki import SERVICE_ACCOUNT_ISSUER, Pki, ensure_pki
from .processes import ProcessRecord, spawn, stop
from .steps import StepFailed, is_root, say

CONTEXT_NAME = "rectrain-local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTROLLERS = (
    "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-attachdetach,-persistentvolume-expander"
)
NODE_NAME = "rectrain-local-node"
PORT_NAMES = ("etcdClient", "etcdPeer", "apiserver", "controllerManager", "scheduler")


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest directory upwards holding rectrain's pyproject.toml, else the current directory."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and 'name = "rectrain"' in pyproject.read_text():
            return directory
    return here


def default_state_dir() -> Path:
    configured = os.environ.get("RECTRAIN_STATE_DIR")
    return Path(configured) if configured else find_repo_root() / ".rectrain"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ClusterState:
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ports": self.ports, "processes": [p.to_json() for p in self.processes]}

    @classmethod
    def from_json(cls, data: dict) -> "ClusterState":
        return cls(ports=dict(data.get("ports", {})), processes=[ProcessRecord.from_json(p) for p in data.get("processes", [])])


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    ready_timeout: float = 60.0


class LocalCluster:
    """One local control plane, identified by its state directory."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.cluster_dir = self.state_dir / "cluster"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.pki_dir = self.cluster_dir / "pki"
        self.etcd_dir = self.cluster_dir / "etcd"
        self.log_dir = self.cluster_dir / "logs"
        self.state_file = self.cluster_dir / "state.json"

    # ---- state ---------------------------------------------------------------------------------
    def load_state(self) -> ClusterState:
        try:
            return ClusterState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError):
            return ClusterState()

    def save_state(self, state: ClusterState) -> None:
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
        tmp.replace(self.state_file)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.load_state().ports['apiserver']}"

    def admin_token(self) -> str:
        return Pki(self.pki_dir).admin_token

    # ---- health --------------------------------------------------------------------------------
    def _get(self, url: str, *, token: str | None = None, verify: bool = True) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(Pki(self.pki_dir).ca_cert)) if verify else ssl._create_unverified_context()  # noqa: SLF001
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def apiserver_ready(self) -> bool:
        state = self.load_state()
        if "apiserver" not in state.ports:
            return False
        status, body = self._get(f"https://127.0.0.1:{state.ports['apiserver']}/readyz", token=self.admin_token())
        return status == 200 and body.strip() == "ok"

    def _healthz(self, port_name: str) -> Callable[[], bool]:
        def check() -> bool:
            port = self.load_state().ports[port_name]
            return self._get(f"https://127.0.0.1:{port}/healthz", verify=False)[0] == 200

        return check

    def _etcd_ready(self) -> bool:
        port = self.load_state().ports["etcdClient"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return b'"health":"true"' in response.read()
        except (urllib.error.URLError, OSError):
            return False

    def default_service_account_exists(self) -> bool:
        url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        return self._get(url, token=self.admin_token())[0] == 200

    def running(self) -> bool:
        state = self.load_state()
        names = {p.name for p in state.processes if p.alive()}
        everything_alive = len(names) == len(state.processes)
        core = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        return everything_alive and core <= names and self.apiserver_ready()

    # ---- files ---------------------------------------------------------------------------------
    def _write_kubeconfig(self, path: Path, port: int) -> None:
        pki = Pki(self.pki_dir)
        ca = base64.b64encode(pki.ca_cert.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": f"https://127.0.0.1:{port}", "certificate-authority-data": ca}}],
            "users": [{"name": "admin", "user": {"token": pki.admin_token}}],
            "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": "admin", "namespace": "default"}}],
            "current-context": CONTEXT_NAME,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    def _choose_ports(self, previous: dict[str, int]) -> dict[str, int]:
        ports: dict[str, int] = {}
        for name in PORT_NAMES:
            old = previous.get(name)
            ports[name] = old if old and port_is_free(old) else free_port()
        while len(set(ports.values())) != len(ports):
            ports = {name: free_port() for name in PORT_NAMES}
        return ports

    # ---- components ----------------------------------------------------------------------------
    def _components(self, bin_dir: Path, ports: dict[str, int]) -> list[Component]:
        pki = Pki(self.pki_dir)
        internal_kubeconfig = self.cluster_dir / "admin.kubeconfig"
        etcd_client = f"http://127.0.0.1:{ports['etcdClient']}"
        etcd_peer = f"http://127.0.0.1:{ports['etcdPeer']}"
        common_auth = [
            f"--kubeconfig={internal_kubeconfig}",
            f"--authentication-kubeconfig={internal_kubeconfig}",
            f"--authorization-kubeconfig={internal_kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--bind-address=127.0.0.1",
        ]
        return [
            Component(
                "etcd",
                [
                    shutil.which("etcd") or "etcd",
                    "--name=rectrain-local",
                    f"--data-dir={self.etcd_dir}",
                    f"--listen-client-urls={etcd_client}",
                    f"--advertise-client-urls={etcd_client}",
                    f"--listen-peer-urls={etcd_peer}",
                    f"--initial-advertise-peer-urls={etcd_peer}",
                    f"--initial-cluster=rectrain-local={etcd_peer}",
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                self._etcd_ready,
            ),
            Component(
                "kube-apiserver",
                [
                    str(bin_dir / "kube-apiserver"),
                    f"--etcd-servers={etcd_client}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={ports['apiserver']}",
                    "--insecure-port=0",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    # `kubectl logs`: the API server calls the node agent's kubelet endpoint.
                    f"--kubelet-client-certificate={pki.serving_cert}",
                    f"--kubelet-client-key={pki.serving_key}",
                    f"--kubelet-certificate-authority={pki.ca_cert}",
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--token-auth-file={pki.token_file}",
                    "--authorization-mode=Node,RBAC",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    # No kube-proxy here, so a Service's ClusterIP leads nowhere: the API server calls
                    # admission webhooks (and aggregated APIs) at an endpoint's pod IP instead.
                    "--enable-aggregator-routing=true",
                    "--allow-privileged=true",
                    f"--cert-dir={self.pki_dir / 'apiserver-generated'}",
                    "--v=0",
                ],
                self.apiserver_ready,
            ),
            Component(
                "kube-controller-manager",
                [
                    str(bin_dir / "kube-controller-manager"),
                    *common_auth,
                    f"--secure-port={ports['controllerManager']}",
                    f"--controllers={CONTROLLERS}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    f"--cert-dir={self.pki_dir / 'controller-manager-generated'}",
                    "--v=0",
                ],
                self._healthz("controllerManager"),
            ),
            Component(
                "kube-scheduler",
                [
                    str(bin_dir / "kube-scheduler"),
                    *common_auth,
                    f"--secure-port={ports['scheduler']}",
                    f"--cert-dir={self.pki_dir / 'scheduler-generated'}",
                    "--v=0",
                ],
                self._healthz("scheduler"),
            ),
        ]

    def node_name(self) -> str:
        return NODE_NAME

    def node_ready(self) -> bool:
        url = f"{self.server}/api/v1/nodes/{NODE_NAME}"
        status, body = self._get(url, token=self.admin_token())
        if status != 200:
            return False
        node = json.loads(body)
        taints = node.get("spec", {}).get("taints") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions") or [])
        return ready and not taints

    def _node_agent(self, ports: dict[str, int], gpus: int) -> Component:
        return Component(
            "node-agent",
            [
                sys.executable, "-m", "rectrain_local.node.agent",
                f"--kubeconfig={self.cluster_dir / 'admin.kubeconfig'}",
                f"--state-dir={self.state_dir}",
                f"--node-name={NODE_NAME}",
                f"--api-port={ports['apiserver']}",
                f"--gpus={gpus}",
            ],
            self.node_ready,
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    def up(self, *, fresh: bool = False, timeout: float = 90.0, node: bool = True, gpus: int = 0) -> None:
        """Start the control plane and the node agent, or reuse them when they already run (unless `fresh`).

        The node agent (pods as local processes) needs root for network namespaces; without root, or
        with node=False, pods are scheduled nowhere and stay Pending.
        """
        if not fresh and self.running():
            self._write_kubeconfig(self.kubeconfig, self.load_state().ports["apiserver"])
            say(f"already running; kubeconfig: {self.kubeconfig}")
            return
        started = time.monotonic()
        self.down(quiet=True)
        if fresh:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)
        bin_dir = control_plane_build.build().bin_dir
        control_plane_build.ensure_system_packages(self.log_dir, need_source=False)
        ensure_pki(self.pki_dir)
        state = ClusterState(ports=self._choose_ports(self.load_state().ports))
        self.save_state(state)
        self._write_kubeconfig(self.cluster_dir / "admin.kubeconfig", state.ports["apiserver"])
        deadline = time.monotonic() + timeout
        try:
            components = self._components(bin_dir, state.ports)
            if node and is_root():
                components.append(self._node_agent(state.ports, gpus))
            elif node:
                say("not root: no node agent (pods will stay Pending); run as root to run pods")
            for component in components:
                log = self.log_dir / f"{component.name}.log"
                say(f"starting {component.name}")
                try:
                    # The node agent's log is JSON lines (node/jsonlog.py): no plain-text header in it.
                    record = spawn(component.name, component.argv, log, header=component.name != "node-agent")
                except (OSError, RuntimeError) as exc:
                    raise StepFailed(f"start {component.name}", component.argv, log, str(exc)) from exc
                state.processes.append(record)
                self.save_state(state)
                self._wait(component, record, log, deadline)
            self._wait_until("default ServiceAccount", self.default_service_account_exists, deadline, self.log_dir / "kube-controller-manager.log")
        except BaseException:
            self.down(quiet=True)
            raise
        self._write_kubeconfig(self.kubeconfig, state.ports["apiserver"])
        say(f"ready in {time.monotonic() - started:.1f}s; export KUBECONFIG={self.kubeconfig}")

    def _wait(self, component: Component, record: ProcessRecord, log: Path, deadline: float) -> None:
        while not component.ready():
            if not record.alive():
                raise StepFailed(f"start {component.name}", component.argv, log, "the process exited")
            if time.monotonic() > deadline:
                raise StepFailed(f"wait for {component.name}", component.argv, log, "not ready before the deadline")
            time.sleep(0.1)

    @staticmethod
    def _wait_until(what: str, check: Callable[[], bool], deadline: float, log: Path) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise StepFailed(f"wait for {what}", what, log, "not there before the deadline")
            time.sleep(0.2)

    def down(self, *, quiet: bool = False) -> None:
        """Stop exactly the processes this state directory started (last started, first stopped)."""
        state = self.load_state()
        for record in reversed(state.processes):
            if record.alive() and not quiet:
                say(f"stopping {record.name} (pid {record.pid})")
            stop(record)
        state.processes = []
        if self.cluster_dir.exists():
            self.save_state(state)

    def restart_component(self, name: str, timeout: float = 60.0) -> ProcessRecord:
        """Stop one control-plane component (e.g. "kube-apiserver") and start it again with the same
        argv and ports, leaving every other process (etcd, the node agent, ...) running; waits until
        it is ready and returns its new ProcessRecord. For chaos tests of a control-plane blip."""
        state = self.load_state()
        index = next((i for i, p in enumerate(state.processes) if p.name == name), None)
        component = next((c for c in self._components(control_plane_build.k8s_cache().bin_dir, state.ports) if c.name == name), None)
        if index is None or component is None:
            raise ValueError(f"{name}: not a running control-plane component of {self.state_dir}")
        stop(state.processes[index])
        log = self.log_dir / f"{name}.log"
        record = spawn(name, component.argv, log)
        state.processes[index] = record
        self.save_state(state)
        self._wait(component, record, log, time.monotonic() + timeout)
        return record

    def status(self) -> dict:
        state = self.load_state()
        return {
            "stateDir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "apiserverReady": self.apiserver_ready(),
            "processes": [{**p.to_json(), "alive": p.alive()} for p in state.processes],
            "ports": state.ports,
        }
