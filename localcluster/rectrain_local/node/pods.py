"""Pure translation of a Pod object into what the node runs, and of what happened into pod status.

No API calls and no processes here: a pod dict in, plain data out, so it is tested without a cluster.
Pods are plain dicts as the API returns them (camelCase keys), never client model objects.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CLUSTER_DOMAIN = "cluster.local"
# A pod's image is mapped to the local Python environment; when the pod gives no command, the image's
# entrypoint is looked up here (first matching glob wins).
DEFAULT_IMAGE_ENTRYPOINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("*rectrain-trainer*", ("rectrain-train",)),
    ("*rectrain*trainer*", ("rectrain-train",)),
    ("*rectrain-operator*", ("rectrain-operator",)),
)


class PodSpecError(ValueError):
    """The pod asks for something this node cannot do; the message names the field."""


@dataclass(frozen=True)
class Mount:
    source: str  # host path; "tmpfs" for a memory-backed emptyDir
    target: str
    read_only: bool = False
    tmpfs_size: str | None = None


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the in-namespace launcher needs to exec the container's process."""

    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str | None
    run_as_user: int | None
    run_as_group: int | None
    hostname: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "argv": self.argv,
                "env": self.env,
                "mounts": [m.__dict__ for m in self.mounts],
                "workingDir": self.working_dir,
                "runAsUser": self.run_as_user,
                "runAsGroup": self.run_as_group,
                "hostname": self.hostname,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "LaunchSpec":
        data = json.loads(text)
        return cls(
            argv=data["argv"],
            env=data["env"],
            mounts=[Mount(**m) for m in data["mounts"]],
            working_dir=data["workingDir"],
            run_as_user=data["runAsUser"],
            run_as_group=data["runAsGroup"],
            hostname=data["hostname"],
        )


@dataclass(frozen=True)
class NodeContext:
    """What the node knows that the pod does not say."""

    node_name: str
    host_ip: str
    api_host: str
    api_port: int
    base_path: str  # PATH inside pods: the local environment's bin first
    pod_dir: Path  # this pod's own directory on the node
    claim_paths: dict[str, str] = field(default_factory=dict)  # PVC name -> host path of its bound volume
    image_entrypoints: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_IMAGE_ENTRYPOINTS
    extra_env: dict[str, str] = field(default_factory=dict)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def main_container(pod: dict) -> dict:
    containers = pod["spec"].get("containers") or []
    if not containers:
        raise PodSpecError("spec.containers: at least one container is required")
    return containers[0]


def pod_hostname(pod: dict) -> str:
    return pod["spec"].get("hostname") or pod["metadata"]["name"]


def pod_dns_names(pod: dict) -> list[str]:
    """Names peers use for this pod: hostname.subdomain.namespace.svc.cluster.local and shorter forms."""
    hostname = pod_hostname(pod)
    subdomain = pod["spec"].get("subdomain")
    namespace = pod["metadata"]["namespace"]
    if not subdomain:
        return [hostname]
    # As a kubelet writes /etc/hosts: the FQDN and the bare hostname (which gloo resolves to pick its
    # interface), plus the short forms the cluster's DNS search path would resolve.
    fqdn = f"{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}"
    return [fqdn, f"{hostname}.{subdomain}.{namespace}.svc", f"{hostname}.{subdomain}.{namespace}", f"{hostname}.{subdomain}", hostname]


def _field_ref(pod: dict, path: str, pod_ip: str, host_ip: str, node_name: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise PodSpecError(f"env valueFrom.fieldRef.fieldPath {path!r} is not supported by the local node")


def _resource_ref(container: dict, resource: str, divisor: str | None) -> str:
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    kind, _, name = resource.partition(".")
    value = (limits if kind == "limits" else requests).get(name)
    if value is None:
        raise PodSpecError(f"env valueFrom.resourceFieldRef {resource!r} is not set on the container")
    if name == "cpu":
        millis = int(value[:-1]) if str(value).endswith("m") else int(float(value) * 1000)
        return str(max(1, -(-millis // 1000)))
    return str(value)


def container_env(pod: dict, ctx: NodeContext, pod_ip: str) -> dict[str, str]:
    """The environment a kubelet would give the main container."""
    container = main_container(pod)
    env: dict[str, str] = {
        "PATH": ctx.base_path,
        "HOSTNAME": pod_hostname(pod),
        "HOME": str(ctx.pod_dir / "home"),
        "KUBERNETES_SERVICE_HOST": ctx.api_host,
        "KUBERNETES_SERVICE_PORT": str(ctx.api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(ctx.api_port),
        **ctx.extra_env,
    }
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = _expand(str(item["value"]), env)
        elif "valueFrom" in item:
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"], pod_ip, ctx.host_ip, ctx.node_name)
            elif "resourceFieldRef" in source:
                env[name] = _resource_ref(container, source["resourceFieldRef"]["resource"], source["resourceFieldRef"].get("divisor"))
            else:
                raise PodSpecError(f"env {name}: valueFrom {sorted(source)} is not supported by the local node")
        else:
            env[name] = ""
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, others stay as written."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def container_argv(pod: dict, ctx: NodeContext, env: dict[str, str]) -> list[str]:
    container = main_container(pod)
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        image = container.get("image", "")
        for pattern, entrypoint in ctx.image_entrypoints:
            if fnmatch.fnmatch(image, pattern):
                command = list(entrypoint)
                break
        else:
            raise PodSpecError(
                f"spec.containers[0].command: image {image!r} has no known entrypoint on the local node; give a command"
            )
    return [_expand(part, env) for part in command + args]


def volume_mounts(pod: dict, ctx: NodeContext) -> list[Mount]:
    """Map the pod's volumes onto node directories: emptyDir per pod, PVCs persistent, hostPath as is."""
    container = main_container(pod)
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts: list[Mount] = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        name = mount["name"]
        if name not in volumes:
            raise PodSpecError(f"spec.containers[0].volumeMounts[{index}].name: no volume named {name!r}")
        volume = volumes[name]
        read_only = bool(mount.get("readOnly"))
        sub_path = mount.get("subPath") or ""
        if "emptyDir" in volume:
            empty = volume["emptyDir"] or {}
            if empty.get("medium") == "Memory":
                mounts.append(Mount("tmpfs", mount["mountPath"], read_only, empty.get("sizeLimit")))
                continue
            source = ctx.pod_dir / "volumes" / name
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in ctx.claim_paths:
                raise PodSpecError(f"spec.volumes[{name}].persistentVolumeClaim: claim {claim!r} is not bound to a local volume")
            source = Path(ctx.claim_paths[claim])
            read_only = read_only or bool(volume["persistentVolumeClaim"].get("readOnly"))
        elif "hostPath" in volume:
            source = Path(volume["hostPath"]["path"])
        elif "configMap" in volume or "secret" in volume or "projected" in volume or "downwardAPI" in volume:
            source = ctx.pod_dir / "volumes" / name  # filled by the agent before launch
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise PodSpecError(f"spec.volumes[{name}]: volume type {kinds} is not supported by the local node")
        mounts.append(Mount(str(source / sub_path) if sub_path else str(source), mount["mountPath"], read_only))
    return mounts


def launch_spec(pod: dict, ctx: NodeContext, pod_ip: str, service_account_dir: Path | None) -> LaunchSpec:
    env = container_env(pod, ctx, pod_ip)
    argv = container_argv(pod, ctx, env)
    mounts = volume_mounts(pod, ctx)
    if service_account_dir is not None and not any(m.target == SERVICE_ACCOUNT_MOUNT for m in mounts):
        mounts.append(Mount(str(service_account_dir), SERVICE_ACCOUNT_MOUNT, read_only=True))
    container = main_container(pod)
    pod_security = pod["spec"].get("securityContext") or {}
    container_security = container.get("securityContext") or {}
    run_as_user = container_security.get("runAsUser", pod_security.get("runAsUser"))
    run_as_group = container_security.get("runAsGroup", pod_security.get("runAsGroup"))
    return LaunchSpec(
        argv=argv,
        env=env,
        mounts=mounts,
        working_dir=container.get("workingDir"),
        run_as_user=run_as_user,
        run_as_group=run_as_group,
        hostname=pod_hostname(pod),
    )


# ---- status ------------------------------------------------------------------------------------


def _conditions(ready: bool, now: str) -> list[dict]:
    flag = "True" if ready else "False"
    return [
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": flag, "lastTransitionTime": now},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
    ]


def running_status(pod: dict, pod_ip: str, host_ip: str, started_at: str, container_id: str) -> dict:
    container = main_container(pod)
    return {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip,
        "startTime": started_at,
        "conditions": _conditions(True, started_at),
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "rectrain-local://" + container.get("image", ""),
                "containerID": container_id,
                "ready": True,
                "started": True,
                "restartCount": 0,
                # Explicit nulls: status is strategic-merge-patched, and a container is in one state only.
                "state": {"running": {"startedAt": started_at}, "terminated": None, "waiting": None},
            }
        ],
    }


def terminated_reason(exit_code: int, oom_killed: bool = False) -> str:
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def terminated_status(
    pod: dict,
    pod_ip: str,
    host_ip: str,
    started_at: str | None,
    container_id: str,
    exit_code: int,
    message: str = "",
    reason: str | None = None,
    signal: int | None = None,
) -> dict:
    """Status of a pod whose only container ended (restartPolicy Never/OnFailure-exhausted semantics)."""
    now = now_rfc3339()
    container = main_container(pod)
    terminated: dict = {
        "exitCode": exit_code,
        "reason": reason or terminated_reason(exit_code),
        "startedAt": started_at or now,
        "finishedAt": now,
        "containerID": container_id,
    }
    if message:
        terminated["message"] = message
    if signal is not None:
        terminated["signal"] = signal
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "hostIP": host_ip,
        "startTime": started_at or now,
        "conditions": _conditions(False, now),
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "rectrain-local://" + container.get("image", ""),
                "containerID": container_id,
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated, "running": None, "waiting": None},
            }
        ],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def failed_to_start_status(pod: dict, host_ip: str, reason: str, message: str) -> dict:
    """The container could not be started at all (bad command, unsupported volume, ...)."""
    status = terminated_status(pod, "", host_ip, None, "", 128, message=message, reason=reason)
    status["reason"] = reason
    status["message"] = message
    return status


FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048


def termination_message(pod: dict, exit_code: int, log_tail: str, message_file_text: str | None) -> str:
    """What a kubelet puts in state.terminated.message: the termination-log file, or the log on error."""
    if message_file_text:
        return message_file_text[-4096:]
    policy = main_container(pod).get("terminationMessagePolicy", "File")
    if exit_code != 0 and policy == "FallbackToLogsOnError":
        # A kubelet's limits for the log's tail: the last 80 lines, at most 2048 bytes.
        return "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
    return ""
