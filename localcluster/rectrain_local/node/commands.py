"""`rectrain-local logs` and `rectrain-local reclaim`: what a user does to one pod on the local node."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kubernetes import client, config

from ..cluster import LocalCluster
from ..steps import StepFailed
from .pods import now_rfc3339
from .podstatus import STRATEGIC
from .worker import CURRENT_LOG, pod_log_dirs


def pod_log_paths(cluster: LocalCluster, namespace: str, pod: str) -> list[Path]:
    """Log files of every pod of that name the node ran, oldest first."""
    pods_dir = cluster.cluster_dir / "node" / "pods"
    paths = [d / CURRENT_LOG for d in pod_log_dirs(pods_dir, namespace, pod).values() if (d / CURRENT_LOG).is_file()]
    return sorted(paths, key=lambda p: p.stat().st_mtime)


def print_logs(cluster: LocalCluster, namespace: str, pod: str, follow: bool = False) -> int:
    paths = pod_log_paths(cluster, namespace, pod)
    if not paths:
        print(f"rectrain-local: no log for pod {namespace}/{pod} on the local node", file=sys.stderr)
        return 1
    path = paths[-1]
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not follow or not _pod_running(cluster, namespace, pod):
                return 0
            time.sleep(0.5)


def _core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def _pod_running(cluster: LocalCluster, namespace: str, pod: str) -> bool:
    try:
        return _core(cluster).read_namespaced_pod(pod, namespace).status.phase in ("Pending", "Running")
    except client.ApiException:
        return False


def reclaim_pod(cluster: LocalCluster, namespace: str, pod: str, grace_seconds: int) -> None:
    """What a cloud's spot reclaim does to a pod: it is marked as disrupted, then evicted with a grace
    period; the node sends SIGTERM, waits, kills, and the pod is gone."""
    core = _core(cluster)
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "TerminationByCloudProvider",
        "message": "rectrain-local reclaim: the spot instance's capacity was reclaimed",
        "lastTransitionTime": now_rfc3339(),
    }
    try:
        core.patch_namespaced_pod_status(pod, namespace, {"status": {"conditions": [condition]}}, _content_type=STRATEGIC)
        eviction = {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
            "deleteOptions": {"gracePeriodSeconds": grace_seconds},
        }
        core.create_namespaced_pod_eviction(pod, namespace, eviction)
    except client.ApiException as exc:
        raise StepFailed("reclaim", f"evict {namespace}/{pod}", None, f"{exc.status} {exc.reason}: {exc.body}") from exc
    print(f"reclaimed {namespace}/{pod}: SIGTERM now, killed after {grace_seconds}s")
