"""One pod's life on the node, in a thread of its own: address, namespace, volumes, token, the
container's process (restarted in place as its restartPolicy says), its status, and its end.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from ..processes import ProcessRecord, process_start_time
from . import network
from .hosts import API_SERVICE_HOST, PodAddress, PodHostsFiles
from .pods import LaunchSpec, NodeContext, PodSpecError, launch_spec, now_rfc3339, pod_dns_names, termination_message
from .podstatus import EXIT_CODE_SIGNAL_BASE, ContainerRun, PodStatusReporter
from .volumes import TOKEN_SECONDS, PodVolumes

log = logging.getLogger("rectrain.node")
RESTART_BACKOFF_SECONDS = 10.0  # a kubelet's container restart back-off: 10 s doubling to 5 min
MAX_RESTART_BACKOFF_SECONDS = 300.0
CURRENT_LOG = "container.log"
PREVIOUS_LOG = "container.previous.log"  # the run before the last in-place restart


def pod_log_dir(logs_dir: Path, namespace: str, name: str, uid: str) -> Path:
    """The directory of one pod's container logs (CURRENT_LOG, PREVIOUS_LOG) under the node's `logs_dir`."""
    return logs_dir / f"{namespace}_{name}_{uid}"


def pod_log_dirs(logs_dir: Path, namespace: str, name: str) -> dict[str, Path]:
    """The log directories of every pod of that name the node ran, by pod uid."""
    dirs = logs_dir.glob(pod_log_dir(logs_dir, namespace, name, "*").name)
    return {d.name.rsplit("_", 1)[1]: d for d in dirs if d.is_dir()}


@dataclass(frozen=True)
class NodeServices:
    """What a pod worker uses of its node. The agent builds one and every worker shares it."""

    node_name: str
    api_port: int
    base_path: str  # PATH inside pods: the local environment's bin first
    logs_dir: Path  # one directory of container logs per pod, kept after the pod is gone
    network: network.PodNetwork
    ips: network.IpPool
    volumes: PodVolumes
    status: PodStatusReporter
    hosts: PodHostsFiles
    # Only the agent knows which workers run: a worker says when its process changed (so the record a
    # restarted agent reads is current) and when it is done (so the agent forgets it).
    processes_changed: Callable[[], None]
    worker_done: Callable[[str], None]


class PodWorker(threading.Thread):
    """One pod's life on this node."""

    def __init__(self, node: NodeServices, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.uid = meta["uid"]
        self.pod_dir = node.volumes.pod_dir(self.uid)
        self.log_path = pod_log_dir(node.logs_dir, meta["namespace"], meta["name"], self.uid) / CURRENT_LOG
        self.pod_ip = ""
        self.process: subprocess.Popen | None = None
        self.record: ProcessRecord | None = None  # what a restarted agent needs to end this process
        self.stop_requested = threading.Event()
        self.grace_seconds = 30
        self.shutdown = False  # the agent stops, the pod does not: leave it to the next agent
        self._lock = threading.Lock()

    def request_stop(self, grace_seconds: int, shutdown: bool = False) -> None:
        with self._lock:
            if self.stop_requested.is_set():
                return
            self.grace_seconds = grace_seconds
            self.shutdown = shutdown
            self.stop_requested.set()

    def container_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(self) -> None:
        node, meta = self.node, self.pod["metadata"]
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a pod failure must never take the agent down
            log.exception("pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            node.status.patch(self.pod, node.status.failed_to_start(self.pod, "NodeAgentError", str(exc)))
        finally:
            network.delete_pod_netns(self.uid)
            node.ips.give_back(self.pod_ip)
            node.hosts.remove(self.uid)
            node.worker_done(self.uid)
            if self.stop_requested.is_set() and not self.shutdown:
                node.volumes.remove_pod_dir(self.uid)
                node.status.finish_deletion(meta["namespace"], meta["name"], self.uid)

    def _run(self) -> None:
        self.node.volumes.prepare_pod_dir(self.uid)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pod_ip = self.node.ips.take()
        spec = self._launch_spec()
        if spec is None or self.stop_requested.is_set():
            return
        netns = network.create_pod_netns(self.node.network, self.uid, self.pod_ip)
        self.node.hosts.add(self.uid, PodAddress(self.pod_ip, pod_dns_names(self.pod), netns))
        spec_file = self.pod_dir / "launch.json"
        spec_file.write_text(spec.to_json())
        self._run_container(netns, spec_file)

    def _launch_spec(self) -> LaunchSpec | None:
        """What the launcher runs, with the pod's volumes and token in place; None (and the pod
        reported failed) when the pod asks for what this node cannot give."""
        node, pod = self.node, self.pod
        ctx = NodeContext(
            node_name=node.node_name, host_ip=node.network.gateway, api_host=API_SERVICE_HOST, api_port=node.api_port,
            base_path=node.base_path, pod_dir=self.pod_dir, claim_paths=node.volumes.claim_paths(pod),
        )
        try:
            mount_token = pod["spec"].get("automountServiceAccountToken", True)
            account_dir = node.volumes.write_service_account(pod, self.pod_dir) if mount_token else None
            node.volumes.project_config_volumes(pod, self.pod_dir)
            spec = launch_spec(pod, ctx, self.pod_ip, account_dir)
        except (PodSpecError, client.ApiException) as exc:
            message = str(exc) if isinstance(exc, PodSpecError) else f"{exc.status} {exc.reason}: {exc.body}"
            node.status.patch(pod, node.status.failed_to_start(pod, "CreateContainerConfigError", message))
            node.status.event(pod, "Failed", message, "Warning")
            return None
        return self._honour_run_as(spec)

    def _honour_run_as(self, spec: LaunchSpec) -> LaunchSpec:
        if spec.run_as_user is None:
            return spec
        if not _can_run_as(spec.run_as_user, spec.run_as_group):
            # A fact about this node, not about each pod: one notice on the Node (kubectl describe node).
            self.node.status.node_notice(
                f"run-as-{spec.run_as_user}", "RunAsUserNotHonored",
                f"uid {spec.run_as_user} cannot run this node's Python environment (it lives below a directory that "
                f"uid cannot read): pods asking for it run as the agent's user (uid {os.getuid()}) instead")
            return LaunchSpec(**{**spec.__dict__, "run_as_user": None, "run_as_group": None})
        _chown_tree(self.pod_dir, spec.run_as_user, spec.run_as_group)
        return spec

    def _run_container(self, netns: str, spec_file: Path) -> None:
        """Run the container until it ends for good, restarting it in place as a kubelet does."""
        pod, status_reporter = self.pod, self.node.status
        policy = pod["spec"].get("restartPolicy", "Always")
        run = ContainerRun(self.pod_ip)
        while True:
            self._start_process(netns, spec_file, run)
            exit_code = self._wait()
            signal_number = -exit_code if exit_code < 0 else None
            code = EXIT_CODE_SIGNAL_BASE + signal_number if signal_number else exit_code
            log.info("pod %s/%s: container exited with code %d", pod["metadata"]["namespace"], pod["metadata"]["name"], code)
            message = termination_message(pod, code, _tail(self.log_path), None)
            status = status_reporter.terminated(pod, run, code, message, signal_number)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if self.shutdown or self.stop_requested.is_set() or not restart:
                break
            # As a kubelet does: restart in place with a growing back-off; the pod stays Running.
            run.remember(status)
            backoff = min(RESTART_BACKOFF_SECONDS * 2 ** (run.restarts - 1), MAX_RESTART_BACKOFF_SECONDS)
            status_reporter.patch(pod, status_reporter.back_off(pod, run, backoff))
            status_reporter.event(pod, "BackOff", f"Back-off {backoff:g}s restarting the container (exit code {code})", "Warning")
            if self.stop_requested.wait(backoff):
                return
        if not self.shutdown:
            status_reporter.patch(pod, status)

    def _start_process(self, netns: str, spec_file: Path, run: ContainerRun) -> None:
        """Start the launcher in the pod's namespace, record it and report the pod Running."""
        node, pod = self.node, self.pod
        run.started_at = now_rfc3339()
        if run.restarts:  # as a kubelet keeps it for `kubectl logs --previous`
            self.log_path.replace(self.log_path.with_name(PREVIOUS_LOG))
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "rectrain_local.node.launch", str(spec_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        start_time = process_start_time(self.process.pid)
        self.record = ProcessRecord(f"pod:{self.uid}", self.process.pid, start_time or 0)
        node.processes_changed()
        run.container_id = f"rectrain-local://{self.uid}/{self.process.pid}"
        node.status.patch(pod, node.status.running(pod, run))
        node.status.event(pod, "Started", f"Started container {pod['spec']['containers'][0]['name']} (pid {self.process.pid})")

    def _wait(self) -> int:
        """The container's exit status; ends it when a stop is requested, and keeps its token fresh."""
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
                    self.node.volumes.write_service_account(self.pod, self.pod_dir)
                except client.ApiException as exc:
                    log.warning("token refresh for %s failed: %s", self.pod["metadata"]["name"], exc.reason)
                token_refresh_at = time.monotonic() + TOKEN_SECONDS * 0.8

    def _terminate(self) -> int:
        """SIGTERM to the container's main process, the grace period, then SIGKILL to all of it."""
        assert self.process is not None
        self.node.status.event(self.pod, "Killing", f"Stopping container with a grace period of {self.grace_seconds}s")
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
