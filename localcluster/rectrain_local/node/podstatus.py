"""What the node tells the API about its pods: status as a kubelet reports it, events, and the final
deletion once a deleted pod's process is gone.

`pods` builds the status of one container run from the pod alone; `ContainerRun` adds what the node
remembers across in-place restarts (restart count, how the previous run ended), and `PodStatusReporter`
adds the node's address and sends it.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from kubernetes import client

from .pods import failed_to_start_status, now_rfc3339, running_status, terminated_status

log = logging.getLogger("rectrain.node")
STRATEGIC = "application/strategic-merge-patch+json"  # the node's patches (agent.py and commands.py use it too)
EXIT_CODE_SIGNAL_BASE = 128  # a shell's convention, as a kubelet reports a container ended by a signal


@dataclass
class ContainerRun:
    """The current run of a pod's container and what a kubelet remembers of the runs before it."""

    pod_ip: str
    started_at: str = ""  # set as each run starts
    container_id: str = ""
    restarts: int = 0
    last_terminated: dict | None = None  # state.terminated of the run before, for lastState

    def remember(self, status: dict) -> None:
        """The run in `status` ended and the container restarts: it becomes lastState."""
        self.last_terminated = status["containerStatuses"][0]["state"]["terminated"]
        self.restarts += 1


class PodStatusReporter:
    """Builds pod status with this node's address, and patches it, records events and ends deletions."""

    def __init__(self, core: client.CoreV1Api, node_name: str, host_ip: str) -> None:
        self.core = core
        self.node_name = node_name
        self.host_ip = host_ip
        self._noticed: set[str] = set()  # node_notice keys already sent
        self._notice_lock = threading.Lock()

    # ---- building ----------------------------------------------------------------------------------
    def running(self, pod: dict, run: ContainerRun) -> dict:
        status = running_status(pod, run.pod_ip, self.host_ip, run.started_at, run.container_id)
        return _with_history(status, run)

    def terminated(self, pod: dict, run: ContainerRun, exit_code: int, message: str, signal_number: int | None) -> dict:
        status = terminated_status(pod, run.pod_ip, self.host_ip, run.started_at, run.container_id, exit_code,
                                   message=message, signal=signal_number)
        return _with_history(status, run)

    def back_off(self, pod: dict, run: ContainerRun, backoff_seconds: float) -> dict:
        """Between in-place restarts: the pod stays Running, its container waits in CrashLoopBackOff."""
        status = self.running(pod, run)
        status["containerStatuses"][0].update(
            ready=False, started=False,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {backoff_seconds:g}s restarting failed container"},
                   "running": None, "terminated": None},
        )
        return status

    def failed_to_start(self, pod: dict, reason: str, message: str) -> dict:
        return failed_to_start_status(pod, self.host_ip, reason, message)

    def agent_restarted(self, pod: dict) -> dict:
        """A pod whose process a previous agent left behind, and this one killed."""
        status = terminated_status(pod, "", self.host_ip, None, "", EXIT_CODE_SIGNAL_BASE + signal.SIGKILL,
                                   message="the node agent restarted and ended this pod's process", reason="NodeAgentRestarted")
        status["reason"] = "NodeAgentRestarted"
        return status

    # ---- sending -----------------------------------------------------------------------------------
    def patch(self, pod: dict, status: dict) -> None:
        """Best effort: a pod deleted meanwhile (404, 409) is not an error; others are logged."""
        try:
            self.core.patch_namespaced_pod_status(
                pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}, _content_type=STRATEGIC
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("status patch for %s/%s failed: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], exc.reason)

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

    def node_notice(self, key: str, reason: str, message: str, kind: str = "Warning") -> None:
        """An Event on this Node, once per key for the life of the agent (a node-wide fact, not each pod's)."""
        with self._notice_lock:
            if key in self._noticed:
                return
            self._noticed.add(key)
        body = {
            "metadata": {"generateName": f"{self.node_name}.", "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": self.node_name, "uid": self.node_name, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }
        try:
            self.core.create_namespaced_event("default", body)
        except client.ApiException as exc:
            log.warning("node event %s failed: %s", reason, exc.reason)
        log.warning("%s: %s", reason, message)

    def finish_deletion(self, namespace: str, name: str, uid: str) -> None:
        """A deleted pod's process is gone: remove the pod object, as a kubelet's status manager does."""
        try:
            # With a body, the API server reads the grace period from it, not from the query.
            self.core.delete_namespaced_pod(name, namespace, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("finishing deletion of %s/%s failed: %s", namespace, name, exc.reason)


def _with_history(status: dict, run: ContainerRun) -> dict:
    container = status["containerStatuses"][0]
    container["restartCount"] = run.restarts
    if run.last_terminated:
        container["lastState"] = {"terminated": run.last_terminated}
    return status
