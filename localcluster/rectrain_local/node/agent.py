"""The local node agent: plays the kubelet for one Node, running each bound pod as a real process.

    python -m rectrain_local.node.agent --kubeconfig K --state-dir D [--node-name N] [--gpus G]

For every pod the scheduler binds to its Node it: allocates an IP, makes a network namespace, writes
the pod's /etc/hosts with its peers, mints a service-account token (TokenRequest, bound to the pod),
prepares volumes, runs the container's command through `launch` (own mount namespace), reports
status like a kubelet (Running, then terminated with exit code and reason), and on deletion sends
SIGTERM, waits the grace period, SIGKILLs and completes the deletion. State comes from the API; the
only local record is which processes it started, so a restarted agent ends what it left cleanly.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client, config, watch

from ..pki import Pki, issue_node_serving_cert
from ..processes import ProcessRecord, process_start_time
from . import network
from .forward import Forwarder
from .logserver import LogServer, LogSource
from .pods import (
    NodeContext,
    PodSpecError,
    failed_to_start_status,
    launch_spec,
    now_rfc3339,
    pod_dns_names,
    running_status,
    termination_message,
    terminated_status,
)

log = logging.getLogger("rectrain.node")
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
TOKEN_SECONDS = 3600
STORAGE_CLASS = "rectrain-local"
RESTART_BACKOFF_SECONDS = 10.0  # a kubelet's container restart back-off: 10 s doubling to 5 min
MAX_RESTART_BACKOFF_SECONDS = 300.0
RUNTIME_ROOT = Path("/var/lib/rectrain-local")
PROVISIONER = "rectrain.io/local-node"
# Pods reach the API server by the names its serving certificate holds, resolved to the node's bridge
# address (where the forwarder listens).
API_SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
EXIT_CODE_SIGNAL_BASE = 128
CURRENT_LOG = "container.log"
PREVIOUS_LOG = "container.previous.log"  # the run before the last in-place restart


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    ip: str = ""
    dns_names: list[str] = field(default_factory=list)
    netns: str = ""


class IpPool:
    def __init__(self, subnet: ipaddress.IPv4Network) -> None:
        self._free = [str(h) for h in list(subnet.hosts())[1:]]  # .1 is the gateway
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            if not self._free:
                raise RuntimeError("the pod network has no free address left")
            return self._free.pop(0)

    def give_back(self, address: str) -> None:
        with self._lock:
            if address and address not in self._free:
                self._free.append(address)


class NodeAgent:
    def __init__(self, kubeconfig: str, state_dir: Path, node_name: str, gpus: int, api_port: int) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.state_dir = state_dir
        self.node_name = node_name
        self.gpus = gpus
        self.api_port = api_port
        self.node_dir = state_dir / "cluster" / "node"
        self.pods_dir = self.node_dir / "pods"  # logs, kept after pods are gone
        # What pods reach by path (home, launch spec) lives where any uid can traverse to it, as
        # under /var/lib/kubelet; the state directory may sit below a private home directory.
        self.runtime_dir = RUNTIME_ROOT / hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
        self.persistent_dir = self.node_dir / "persistent-volumes"
        self.records_file = self.node_dir / "processes.json"
        self.network = network.PodNetwork.for_state_dir(state_dir)
        self.ips = IpPool(self.network.subnet)
        self.pods: dict[str, PodRecord] = {}
        self.workers: dict[str, "PodWorker"] = {}
        self.lock = threading.Lock()
        self.records_lock = threading.Lock()
        self.hosts_lock = threading.Lock()
        self.stopping = threading.Event()
        self.ca_data = self._ca_data(kubeconfig)
        self.base_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
        self.log_server: LogServer | None = None

    @staticmethod
    def _ca_data(kubeconfig: str) -> bytes:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        return base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])

    # ---- node ----------------------------------------------------------------------------------
    def register_node(self) -> None:
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "rectrain.io/local-node": "true",
        }
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": labels}}
        try:
            self.core.create_node(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(self.node_name, {"metadata": {"labels": labels}}, _content_type=STRATEGIC)
        # A hand-made Node starts tainted not-ready; this agent is what makes it ready.
        self.core.patch_node(self.node_name, {"spec": {"taints": None}}, _content_type=MERGE)
        self.heartbeat(capacity)

    def heartbeat(self, capacity: dict | None = None) -> None:
        now = now_rfc3339()
        status: dict = {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "rectrain-local node agent is posting ready status",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "addresses": [{"type": "InternalIP", "address": self.network.gateway}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.port if self.log_server else 0}},
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-rectrain-local", "kubeProxyVersion": "", "containerRuntimeVersion": "rectrain-local://processes",
                "operatingSystem": "linux", "architecture": "amd64", "osImage": "local processes", "kernelVersion": os.uname().release,
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
        if capacity:
            status["capacity"] = capacity
            status["allocatable"] = capacity
        self.core.patch_node_status(self.node_name, {"status": status}, _content_type=STRATEGIC)

    # ---- records of processes, for a restarted agent -------------------------------------------
    def save_records(self) -> None:
        with self.records_lock:
            with self.lock:
                records = {uid: w.record.to_json() for uid, w in self.workers.items() if w.record}
            tmp = self.records_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(records))
            tmp.replace(self.records_file)

    def end_leftovers(self) -> None:
        """A previous agent's processes: end them, and report their pods as disrupted."""
        try:
            records = json.loads(self.records_file.read_text())
        except (OSError, ValueError):
            records = {}
        for uid, data in records.items():
            record = ProcessRecord.from_json(data)
            if record.alive():
                try:
                    os.killpg(record.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            network.delete_pod_netns(uid)
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}").items
        for pod in pods:
            if pod.status.phase in ("Running",) or (pod.status.phase == "Pending" and pod.metadata.uid in records):
                raw = self.api.sanitize_for_serialization(pod)
                status = terminated_status(raw, "", self.network.gateway, None, "", EXIT_CODE_SIGNAL_BASE + signal.SIGKILL,
                                           message="the node agent restarted and ended this pod's process", reason="NodeAgentRestarted")
                status["reason"] = "NodeAgentRestarted"
                self._patch_status(raw, status)
            if pod.metadata.deletion_timestamp:
                self._finish_deletion(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.records_file.unlink(missing_ok=True)

    # ---- API helpers -----------------------------------------------------------------------------
    def _patch_status(self, pod: dict, status: dict) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}, _content_type=STRATEGIC
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("status patch for %s/%s failed: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], exc.reason)

    def _finish_deletion(self, namespace: str, name: str, uid: str) -> None:
        try:
            # With a body, the API server reads the grace period from it, not from the query.
            self.core.delete_namespaced_pod(name, namespace, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("finishing deletion of %s/%s failed: %s", namespace, name, exc.reason)

    def event(self, pod: dict, reason: str, message: str, kind: str = "Normal") -> None:
        meta = pod["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"), "apiVersion": "v1"},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except client.ApiException:
            pass

    def service_account_dir(self, pod: dict, pod_dir: Path) -> Path:
        """Files in-cluster clients read: a token bound to this pod, the CA, the namespace."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "spec": {
                "audiences": None,
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            }
        }
        token = self.core.create_namespaced_service_account_token(account, meta["namespace"], request).status.token
        directory = pod_dir / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (("token", token.encode()), ("ca.crt", self.ca_data), ("namespace", meta["namespace"].encode())):
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(content)
            tmp.chmod(0o644)
            tmp.replace(directory / name)
        return directory

    def project_config_volumes(self, pod: dict, pod_dir: Path) -> None:
        for volume in pod["spec"].get("volumes") or []:
            target = pod_dir / "volumes" / volume["name"]
            if "configMap" in volume:
                source = self.core.read_namespaced_config_map(volume["configMap"]["name"], pod["metadata"]["namespace"])
                files = {k: v.encode() for k, v in (source.data or {}).items()}
            elif "secret" in volume:
                source = self.core.read_namespaced_secret(volume["secret"]["secretName"], pod["metadata"]["namespace"])
                files = {k: base64.b64decode(v) for k, v in (source.data or {}).items()}
            else:
                continue
            target.mkdir(parents=True, exist_ok=True)
            for key, content in files.items():
                (target / key).write_bytes(content)

    # ---- persistent volumes: a provisioner for the local StorageClass ------------------------------
    def ensure_storage_class(self) -> None:
        storage = client.StorageV1Api(self.api)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "Immediate",
        }
        try:
            storage.create_storage_class(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def provision_claims(self) -> None:
        """Give every pending claim of the local class a hostPath volume under the node's directory."""
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if claim.status.phase != "Pending" or claim.spec.volume_name:
                continue
            if (claim.spec.storage_class_name or STORAGE_CLASS) != STORAGE_CLASS:
                continue
            meta = claim.metadata
            path = self.persistent_dir / meta.namespace / f"{meta.name}-{meta.uid[:8]}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            request = ((claim.spec.resources.requests or {}) if claim.spec.resources else {}).get("storage", "1Gi")
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta.uid}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": request},
                    "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid},
                },
            }
            try:
                self.core.create_persistent_volume(volume)
            except client.ApiException as exc:
                if exc.status != 409:
                    log.warning("provisioning %s/%s failed: %s", meta.namespace, meta.name, exc.reason)

    def claim_paths(self, pod: dict) -> dict[str, str]:
        paths = {}
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            try:
                bound = self.core.read_namespaced_persistent_volume_claim(claim, pod["metadata"]["namespace"]).spec.volume_name
                if bound:
                    host_path = self.core.read_persistent_volume(bound).spec.host_path
                    if host_path:
                        paths[claim] = host_path.path
            except client.ApiException:
                continue
        return paths

    # ---- peers -----------------------------------------------------------------------------------
    def refresh_hosts(self) -> None:
        # One refresh at a time, snapshot and writes together: two pods starting at once must not let
        # the older snapshot's write land last (a peer would then never appear in the other's hosts).
        with self.hosts_lock:
            with self.lock:
                records = [r for r in self.pods.values() if r.ip and r.netns]
            entries = [(r.ip, r.dns_names) for r in records]
            api_entry = (self.network.gateway, list(API_SERVICE_NAMES))
            for record in records:
                peers = [e for e in entries if e[0] != record.ip] + [api_entry]
                try:
                    network.write_hosts(record.netns, (record.ip, record.dns_names), peers)
                except OSError as exc:
                    log.warning("hosts for %s: %s", record.netns, exc)

    # ---- the watch loop ----------------------------------------------------------------------------
    def handle(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
        if pod["metadata"].get("deletionTimestamp"):
            if worker:
                worker.request_stop(int(pod["metadata"].get("deletionGracePeriodSeconds") or 30))
            else:
                shutil.rmtree(self.runtime_dir / "pods" / uid, ignore_errors=True)
                self._finish_deletion(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
            return
        if worker or pod.get("status", {}).get("phase") in ("Succeeded", "Failed", "Running"):
            return
        worker = PodWorker(self, pod)
        with self.lock:
            self.workers[uid] = worker
        log.info("starting pod %s/%s (uid %s)", pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
        worker.start()

    def start_log_server(self) -> None:
        """The kubelet endpoint the API server calls for `kubectl logs`, on the node's InternalIP."""
        pki = Pki(self.state_dir / "cluster" / "pki")
        cert, key = issue_node_serving_cert(pki, self.node_dir / "pki", self.node_name, (self.network.gateway, "127.0.0.1"))
        self.log_server = LogServer(self.network.gateway, 0, cert, key, pki.ca_cert, self.pod_logs).start()

    def pod_logs(self, namespace: str, name: str) -> LogSource | None:
        """The log files of the newest pod of that name this node ran."""
        dirs = [d for d in self.pods_dir.glob(f"{namespace}_{name}_*") if d.is_dir()]
        if not dirs:
            return None
        newest = max(dirs, key=lambda d: d.stat().st_mtime)
        uid = newest.name.rsplit("_", 1)[1]

        def running() -> bool:
            with self.lock:
                worker = self.workers.get(uid)
            return worker is not None and worker.process is not None and worker.process.poll() is None

        previous = newest / PREVIOUS_LOG
        return LogSource(newest / CURRENT_LOG, previous if previous.is_file() else None, running)

    def run(self) -> None:
        self.network.ensure_bridge()
        Forwarder(self.network.gateway, self.api_port, "127.0.0.1", self.api_port).start()
        self.start_log_server()
        self.register_node()
        self.ensure_storage_class()
        self.end_leftovers()
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    self.handle(self.api.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    # A short watch and a relist after it: a dropped or stalled watch costs at most
                    # this long, never a pod that is never started.
                    timeout_seconds=30,
                    _request_timeout=(10, 60),
                    _preload_content=False,
                )
                for event in stream:
                    if self.stopping.is_set():
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.handle(event["raw_object"])
                    elif event["type"] == "ERROR":
                        break
            except Exception as exc:  # noqa: BLE001 - the agent outlives API blips
                if self.stopping.is_set():
                    break
                log.warning("pod watch interrupted (%s); re-listing", exc)
                self.stopping.wait(1)

    def _heartbeats(self) -> None:
        beats = 0
        while not self.stopping.wait(1):
            beats += 1
            try:
                self.provision_claims()
                if beats % 20 == 0:
                    self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - the agent outlives API blips
                log.warning("node housekeeping failed: %s", exc)

    def shutdown(self) -> None:
        """Stop every pod process (SIGTERM, then SIGKILL) and remove the pod network."""
        self.stopping.set()
        if self.log_server:
            self.log_server.stop()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(5, shutdown=True)
        for worker in workers:
            worker.join(15)
        self.network.remove_bridge()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class PodWorker(threading.Thread):
    """One pod's life on this node."""

    def __init__(self, agent: NodeAgent, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid = meta["uid"]
        self.pod_dir = agent.runtime_dir / "pods" / self.uid
        self.log_path = agent.pods_dir / f"{meta['namespace']}_{meta['name']}_{self.uid}" / CURRENT_LOG
        self.process: subprocess.Popen | None = None
        self.record: ProcessRecord | None = None
        self.stop_requested = threading.Event()
        self.grace_seconds = 30
        self.shutdown = False
        self._lock = threading.Lock()

    def request_stop(self, grace_seconds: int, shutdown: bool = False) -> None:
        with self._lock:
            if self.stop_requested.is_set():
                return
            self.grace_seconds = grace_seconds
            self.shutdown = shutdown
            self.stop_requested.set()

    def run(self) -> None:
        agent, pod = self.agent, self.pod
        meta = pod["metadata"]
        record = PodRecord(uid=self.uid, namespace=meta["namespace"], name=meta["name"], dns_names=pod_dns_names(pod))
        with agent.lock:
            agent.pods[self.uid] = record
        try:
            self._run(record)
        except Exception as exc:  # noqa: BLE001 - a pod failure must never take the agent down
            log.exception("pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            agent._patch_status(pod, failed_to_start_status(pod, agent.network.gateway, "NodeAgentError", str(exc)))
        finally:
            network.delete_pod_netns(self.uid)
            agent.ips.give_back(record.ip)
            with agent.lock:
                agent.pods.pop(self.uid, None)
                agent.workers.pop(self.uid, None)
            agent.save_records()
            agent.refresh_hosts()
            if self.stop_requested.is_set() and not self.shutdown:
                shutil.rmtree(self.pod_dir, ignore_errors=True)
                agent._finish_deletion(meta["namespace"], meta["name"], self.uid)

    def _run(self, record: PodRecord) -> None:
        agent, pod = self.agent, self.pod
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        for directory in (RUNTIME_ROOT, agent.runtime_dir, agent.runtime_dir / "pods", self.pod_dir):
            directory.chmod(0o711)
        (self.pod_dir / "home").mkdir(exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        record.ip = agent.ips.take()
        ctx = NodeContext(
            node_name=agent.node_name, host_ip=agent.network.gateway, api_host=API_SERVICE_NAMES[2], api_port=agent.api_port,
            base_path=agent.base_path, pod_dir=self.pod_dir, claim_paths=agent.claim_paths(pod),
        )
        try:
            account_dir = agent.service_account_dir(pod, self.pod_dir) if pod["spec"].get("automountServiceAccountToken", True) else None
            agent.project_config_volumes(pod, self.pod_dir)
            spec = launch_spec(pod, ctx, record.ip, account_dir)
        except (PodSpecError, client.ApiException) as exc:
            message = str(exc) if isinstance(exc, PodSpecError) else f"{exc.status} {exc.reason}: {exc.body}"
            agent._patch_status(pod, failed_to_start_status(pod, agent.network.gateway, "CreateContainerConfigError", message))
            agent.event(pod, "Failed", message, "Warning")
            return
        if spec.run_as_user is not None and not _can_run_as(spec.run_as_user, spec.run_as_group):
            agent.event(pod, "RunAsUserNotHonored",
                        f"uid {spec.run_as_user} cannot run this node's Python environment; running as the agent's user", "Warning")
            spec = type(spec)(**{**spec.__dict__, "run_as_user": None, "run_as_group": None})
        elif spec.run_as_user is not None:
            _chown_tree(self.pod_dir, spec.run_as_user, spec.run_as_group)
        if self.stop_requested.is_set():
            return
        record.netns = network.create_pod_netns(agent.network, self.uid, record.ip)
        agent.refresh_hosts()
        spec_file = self.pod_dir / "launch.json"
        spec_file.write_text(spec.to_json())
        policy = pod["spec"].get("restartPolicy", "Always")
        restarts = 0
        last_terminated: dict | None = None
        while True:
            started_at = now_rfc3339()
            if restarts:  # as a kubelet keeps it for `kubectl logs --previous`
                self.log_path.replace(self.log_path.with_name(PREVIOUS_LOG))
            with self.log_path.open("ab") as out:
                self.process = subprocess.Popen(
                    ["ip", "netns", "exec", record.netns, sys.executable, "-m", "rectrain_local.node.launch", str(spec_file)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            start_time = process_start_time(self.process.pid)
            self.record = ProcessRecord(f"pod:{self.uid}", self.process.pid, start_time or 0)
            agent.save_records()
            container_id = f"rectrain-local://{self.uid}/{self.process.pid}"
            running = running_status(pod, record.ip, agent.network.gateway, started_at, container_id)
            running["containerStatuses"][0]["restartCount"] = restarts
            if last_terminated:
                running["containerStatuses"][0]["lastState"] = {"terminated": last_terminated}
            agent._patch_status(pod, running)
            agent.event(pod, "Started", f"Started container {pod['spec']['containers'][0]['name']} (pid {self.process.pid})")

            exit_code = self._wait()
            signal_number = -exit_code if exit_code < 0 else None
            code = EXIT_CODE_SIGNAL_BASE + signal_number if signal_number else exit_code
            message = termination_message(pod, code, _tail(self.log_path), None)
            status = terminated_status(pod, record.ip, agent.network.gateway, started_at, container_id, code, message=message, signal=signal_number)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if self.shutdown or self.stop_requested.is_set() or not restart:
                break
            # As a kubelet does: restart in place with a growing back-off; the pod stays Running.
            last_terminated = status["containerStatuses"][0]["state"]["terminated"]
            restarts += 1
            backoff = min(RESTART_BACKOFF_SECONDS * 2 ** (restarts - 1), MAX_RESTART_BACKOFF_SECONDS)
            waiting = running_status(pod, record.ip, agent.network.gateway, started_at, container_id)
            waiting["containerStatuses"][0].update(
                ready=False, started=False, restartCount=restarts, lastState={"terminated": last_terminated},
                state={"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {backoff:g}s restarting failed container"},
                       "running": None, "terminated": None},
            )
            agent._patch_status(pod, waiting)
            agent.event(pod, "BackOff", f"Back-off {backoff:g}s restarting the container (exit code {code})", "Warning")
            if self.stop_requested.wait(backoff):
                return
        if not self.shutdown:
            status["containerStatuses"][0]["restartCount"] = restarts
            if last_terminated:
                status["containerStatuses"][0]["lastState"] = {"terminated": last_terminated}
            agent._patch_status(pod, status)

    def _wait(self) -> int:
        assert self.process is not None
        token_refresh_at = time.monotonic() + TOKEN_SECONDS * 0.8
        while True:
            try:
                return self.process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stop_requested.is_set():
                return self._terminate()
            if time.monotonic() > token_refresh_at:
                try:
                    self.agent.service_account_dir(self.pod, self.pod_dir)
                except client.ApiException as exc:
                    log.warning("token refresh for %s failed: %s", self.pod["metadata"]["name"], exc.reason)
                token_refresh_at = time.monotonic() + TOKEN_SECONDS * 0.8

    def _terminate(self) -> int:
        """SIGTERM to the container's main process, the grace period, then SIGKILL to all of it."""
        assert self.process is not None
        self.agent.event(self.pod, "Killing", f"Stopping container with a grace period of {self.grace_seconds}s")
        try:
            os.kill(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            code = self.process.wait(timeout=max(self.grace_seconds, 0))
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return code if code is not None else self.process.wait()


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


_RUN_AS_CACHE: dict[tuple[int, int | None], bool] = {}


def _can_run_as(user: int, group: int | None) -> bool:
    """Whether a process that drops to this uid the way the launcher does can still run this node's
    Python (it may live below a private home directory)."""
    key = (user, group)
    if key not in _RUN_AS_CACHE:

        def drop() -> None:
            os.setgroups([])
            os.setgid(group if group is not None else user)
            os.setuid(user)

        try:
            probe = subprocess.run([sys.executable, "-c", "import rectrain_local"], preexec_fn=drop, cwd="/",
                                   capture_output=True, check=False)
            _RUN_AS_CACHE[key] = probe.returncode == 0
        except OSError:
            _RUN_AS_CACHE[key] = False
    return _RUN_AS_CACHE[key]


def _chown_tree(path: Path, user: int, group: int | None) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, user, group if group is not None else user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rectrain-local-node", description="Run pods bound to one Node as local processes.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--node-name", default="rectrain-local-node")
    parser.add_argument("--gpus", type=int, default=0, help="advertise this many nvidia.com/gpu (pods run on the CPU)")
    parser.add_argument("--api-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}')
    agent = NodeAgent(args.kubeconfig, args.state_dir, args.node_name, args.gpus, args.api_port)

    def on_signal(signum, frame):  # noqa: ARG001
        agent.stopping.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        agent.run()
    except SystemExit:
        pass
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
