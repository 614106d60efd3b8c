"""Pod networking for the local node: a bridge of the cluster's own, one network namespace per pod.

Each cluster (state directory) gets a bridge and a /24 in 10.213.0.0/16. Pods get no default route:
they reach their peers and the node (the bridge address), nothing else. Peer names resolve through
`/etc/netns/<netns>/hosts`, which `ip netns exec` shows the pod as /etc/hosts; it is rewritten in place
(same inode) because it is bind-mounted into running pods.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
SUPERNET = ipaddress.ip_network("10.213.0.0/16")


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _subnets_in_use() -> set[ipaddress.IPv4Network]:
    result = ip("-j", "-4", "addr", "show", check=False)
    used = set()
    for link in json.loads(result.stdout or "[]"):
        for addr in link.get("addr_info", []):
            used.add(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


@dataclass(frozen=True)
class PodNetwork:
    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> "PodNetwork":
        """A bridge name and subnet derived from the state directory, skipping subnets already in use."""
        digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()
        bridge = f"rtl{digest[:8]}"
        existing = ip("-j", "-4", "addr", "show", "dev", bridge, check=False)
        if existing.returncode == 0:
            for link in json.loads(existing.stdout or "[]"):
                for addr in link.get("addr_info", []):
                    return cls(bridge, ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
        used = _subnets_in_use()
        subnets = list(SUPERNET.subnets(new_prefix=24))
        start = int(digest[8:12], 16) % len(subnets)
        for offset in range(len(subnets)):
            candidate = subnets[(start + offset) % len(subnets)]
            if candidate.network_address.packed[2] == 0:
                continue
            if not any(candidate.overlaps(u) for u in used):
                return cls(bridge, candidate)
        raise NetworkError("no free /24 left in 10.213.0.0/16 for the pod network")

    def ensure_bridge(self) -> None:
        if ip("link", "show", self.bridge, check=False).returncode != 0:
            ip("link", "add", self.bridge, "type", "bridge")
        addrs = ip("-j", "-4", "addr", "show", "dev", self.bridge).stdout
        if self.gateway not in addrs:
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def remove_bridge(self) -> None:
        ip("link", "del", self.bridge, check=False)


class IpPool:
    """The pod addresses of one subnet not yet given to a pod; safe to share between pod workers."""

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


def netns_name(pod_uid: str) -> str:
    return f"rtl-{pod_uid[:13]}"


def create_pod_netns(network: PodNetwork, pod_uid: str, pod_ip: str) -> str:
    """A namespace with lo and eth0 (a veth into the bridge) holding pod_ip; returns its name."""
    name = netns_name(pod_uid)
    delete_pod_netns(pod_uid)
    host_side = f"rv{pod_uid.replace('-', '')[:11]}"
    ip("netns", "add", name)
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", f"p{host_side[1:]}")
        ip("link", "set", f"p{host_side[1:]}", "netns", name)
        ip("link", "set", host_side, "master", network.bridge, "up")
        ip("-n", name, "link", "set", f"p{host_side[1:]}", "name", "eth0")
        ip("-n", name, "addr", "add", f"{pod_ip}/{network.subnet.prefixlen}", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
    except NetworkError:
        delete_pod_netns(pod_uid)
        raise
    (NETNS_ETC / name).mkdir(parents=True, exist_ok=True)
    return name


def delete_pod_netns(pod_uid: str) -> None:
    name = netns_name(pod_uid)
    ip("netns", "del", name, check=False)  # removes the veth pair with it
    hosts = NETNS_ETC / name / "hosts"
    hosts.unlink(missing_ok=True)
    try:
        (NETNS_ETC / name).rmdir()
    except OSError:
        pass


def list_pod_netns() -> list[str]:
    result = ip("-j", "netns", "list", check=False)
    return [entry["name"] for entry in json.loads(result.stdout or "[]") if entry["name"].startswith("rtl-")]


def write_hosts(netns: str, own: tuple[str, list[str]], peers: list[tuple[str, list[str]]]) -> None:
    """Write the namespace's /etc/hosts in place (running processes see it through a bind mount)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{' '.join(names)}" for address, names in [own, *peers] if address and names]
    # Reverse lookups of the v4-mapped IPv6 form too (a dual-stack listener, such as torch's c10d store,
    # sees its clients as ::ffff:a.b.c.d and names them with getnameinfo). A cluster's DNS answers those
    # at once; this node has none, so without these lines glibc falls through to an unreachable resolver
    # (EAI_AGAIN: "[c10d] The hostname of the client socket cannot be retrieved"). Only the first name,
    # so that forward lookups of the names pods use still give IPv4 alone.
    lines += [f"::ffff:{address}\t{names[0]}" for address, names in [own, *peers] if address and names and "." in address]
    content = "\n".join(lines) + "\n"
    path = NETNS_ETC / netns / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == content:
        return
    with open(path, "r+" if path.exists() else "w") as handle:
        handle.seek(0)
        handle.write(content)
        handle.truncate()
