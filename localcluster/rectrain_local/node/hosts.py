"""The /etc/hosts of every pod on the node: each pod's own names, its peers' and the API server's.

A kubelet leaves peer names to the cluster's DNS; this node has none, so every pod's hosts file lists
every other running pod, and is rewritten whenever a pod gets or loses its address.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from . import network

log = logging.getLogger("rectrain.node")
# Pods reach the API server by the names its serving certificate holds, resolved to the node's bridge
# address (where the forwarder listens).
API_SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
API_SERVICE_HOST = "kubernetes.default.svc"  # what pods get as KUBERNETES_SERVICE_HOST


@dataclass(frozen=True)
class PodAddress:
    """Where a pod's names resolve, and the network namespace whose hosts file it reads."""

    ip: str
    dns_names: list[str]
    netns: str


class PodHostsFiles:
    """The addresses of the pods that run on this node, written into each one's hosts file."""

    def __init__(self, api_address: str) -> None:
        self._api_entry = (api_address, list(API_SERVICE_NAMES))
        self._addresses: dict[str, PodAddress] = {}  # pod uid -> address
        self._addresses_lock = threading.Lock()
        # One refresh at a time, snapshot and writes together: two pods starting at once must not let
        # the older snapshot's write land last (a peer would then never appear in the other's hosts).
        self._refresh_lock = threading.Lock()

    def add(self, uid: str, address: PodAddress) -> None:
        """A pod has its namespace and address: its peers learn its names and it learns theirs."""
        with self._addresses_lock:
            self._addresses[uid] = address
        self.refresh()

    def remove(self, uid: str) -> None:
        """A pod is gone: its names leave its peers' hosts files. Unknown pods are fine."""
        with self._addresses_lock:
            self._addresses.pop(uid, None)
        self.refresh()

    def refresh(self) -> None:
        with self._refresh_lock:
            with self._addresses_lock:
                addresses = list(self._addresses.values())
            entries = [(a.ip, a.dns_names) for a in addresses]
            for address in addresses:
                peers = [e for e in entries if e[0] != address.ip] + [self._api_entry]
                try:
                    network.write_hosts(address.netns, (address.ip, address.dns_names), peers)
                except OSError as exc:
                    log.warning("hosts for %s: %s", address.netns, exc)
