"""The local node agent: plays the kubelet for one Node, running each bound pod as a real process.

    python -m rectrain_local.node.agent --kubeconfig K --state-dir D [--node-name N] [--gpus G]

It registers the Node and keeps it ready, provisions PersistentVolumes for the local StorageClass,
serves `kubectl logs`, and watches the pods bound to its Node: a `PodWorker` (worker.py) runs each
one, with the node's collaborators: addresses (network.py), hosts files (hosts.py), volumes and
tokens (volumes.py), and status, events and deletions (podstatus.py). State comes from the API; the
only local record is which processes it started, so a restarted agent ends what it left cleanly.
Its log is JSON lines on stderr (jsonlog.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import yaml
from kubernetes import client, config, watch

from ..pki import Pki, issue_node_serving_cert
from ..processes import ProcessRecord
from . import jsonlog, network
from .forward import Forwarder
from .gang import DEFAULT_SCHEDULER_NAME, GangBinder
from .hosts import PodHostsFiles
from .logserver import LogServer, LogSource
from .pods import now_rfc3339
from .podstatus import STRATEGIC, PodStatusReporter
from .volumes import PodVolumes
from .worker import CURRENT_LOG, PREVIOUS_LOG, NodeServices, PodWorker, pod_log_dirs

log = logging.getLogger("rectrain.node")
MERGE = "application/merge-patch+json"
HEARTBEAT_EVERY = 20  # housekeeping rounds (one a second) between two Node status heartbeats


class NodeAgent:
    def __init__(self, kubeconfig: str, state_dir: Path, node_name: str, gpus: int, api_port: int,
                 gang_scheduler: str = DEFAULT_SCHEDULER_NAME) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.gang_scheduler = gang_scheduler  # pods naming it are bound by gang.py, a pod group at a time
        self.capacity: dict[str, str] = {}
        self.core = client.CoreV1Api(self.api)
        self.state_dir = state_dir
        self.node_name = node_name
        self.gpus = gpus
        self.api_port = api_port
        self.node_dir = state_dir / "cluster" / "node"
        self.pods_dir = self.node_dir / "pods"  # logs, kept after pods are gone
        self.records_file = self.node_dir / "processes.json"
        self.network = network.PodNetwork.for_state_dir(state_dir)
        self.volumes = PodVolumes(self.api, state_dir, _ca_data(kubeconfig))
        self.status = PodStatusReporter(self.core, node_name, self.network.gateway)
        self.workers: dict[str, PodWorker] = {}  # pod uid -> its worker, while it runs
        self.lock = threading.Lock()  # guards workers
        self.records_lock = threading.Lock()  # one writer of the records file at a time
        self.stopping = threading.Event()
        self.log_server: LogServer | None = None
        self.services = NodeServices(
            node_name=node_name,
            api_port=api_port,
            base_path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            logs_dir=self.pods_dir,
            network=self.network,
            ips=network.IpPool(self.network.subnet),
            volumes=self.volumes,
            status=self.status,
            hosts=PodHostsFiles(self.network.gateway),
            processes_changed=self.save_records,
            worker_done=self.forget_worker,
        )

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
        self.capacity = capacity
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

    def forget_worker(self, uid: str) -> None:
        """A worker is done with its pod: its process leaves the records."""
        with self.lock:
            self.workers.pop(uid, None)
        self.save_records()

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
                self.status.patch(raw, self.status.agent_restarted(raw))
            if pod.metadata.deletion_timestamp:
                self.status.finish_deletion(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.records_file.unlink(missing_ok=True)

    # ---- the watch loop ----------------------------------------------------------------------------
    def handle(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
        if pod["metadata"].get("deletionTimestamp"):
            if worker:
                worker.request_stop(int(pod["metadata"].get("deletionGracePeriodSeconds") or 30))
            else:
                self.volumes.remove_pod_dir(uid)
                self.status.finish_deletion(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
            return
        if worker or pod.get("status", {}).get("phase") in ("Succeeded", "Failed", "Running"):
            return
        worker = PodWorker(self.services, pod)
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
        dirs = pod_log_dirs(self.pods_dir, namespace, name)
        if not dirs:
            return None
        uid, newest = max(dirs.items(), key=lambda item: item[1].stat().st_mtime)

        def running() -> bool:
            with self.lock:
                worker = self.workers.get(uid)
            return worker is not None and worker.container_running()

        previous = newest / PREVIOUS_LOG
        return LogSource(newest / CURRENT_LOG, previous if previous.is_file() else None, running)

    def run(self) -> None:
        self.network.ensure_bridge()
        Forwarder(self.network.gateway, self.api_port, "127.0.0.1", self.api_port).start()
        self.start_log_server()
        self.register_node()
        if self.gang_scheduler:
            GangBinder(self.api, self.node_name, self.capacity, self.gang_scheduler, self.stopping).start()
        self.volumes.ensure_storage_class()
        self.end_leftovers()
        threading.Thread(target=self._housekeeping, name="heartbeat", daemon=True).start()
        while not self.stopping.is_set():
            try:
                self._watch_pods()
            except Exception as exc:  # noqa: BLE001 - the agent outlives API blips
                if self.stopping.is_set():
                    break
                log.warning("pod watch interrupted (%s); re-listing", exc)
                self.stopping.wait(1)

    def _watch_pods(self) -> None:
        """List the pods bound to this node, then watch them for a while; the caller lists again."""
        selector = f"spec.nodeName={self.node_name}"
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
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                self.handle(event["raw_object"])
            elif event["type"] == "ERROR":
                return

    def _housekeeping(self) -> None:
        """Every second: volumes for new claims; every HEARTBEAT_EVERY seconds: the Node's status."""
        rounds = 0
        while not self.stopping.wait(1):
            rounds += 1
            try:
                self.volumes.provision_claims()
                if rounds % HEARTBEAT_EVERY == 0:
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
        self.volumes.remove_all()


def _ca_data(kubeconfig: str) -> bytes:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    return base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rectrain-local-node", description="Run pods bound to one Node as local processes.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--node-name", default="rectrain-local-node")
    parser.add_argument("--gpus", type=int, default=0, help="advertise this many nvidia.com/gpu (pods run on the CPU)")
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--gang-scheduler-name", default=DEFAULT_SCHEDULER_NAME,
                        help="bind pods with this schedulerName a pod group at a time (gang.py); empty: off")
    args = parser.parse_args(argv)
    jsonlog.configure(logging.INFO)
    agent = NodeAgent(args.kubeconfig, args.state_dir, args.node_name, args.gpus, args.api_port, args.gang_scheduler_name)

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
