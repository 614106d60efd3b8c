"""Pure builders: a RecTrainJob's spec -> manifest dicts for its children.

Nothing here calls the Kubernetes API; every function takes plain data and returns plain data.
Children: one headless Service (stable DNS for rendezvous), one Pod per rank and attempt, and a
per-job ServiceAccount/Role/RoleBinding that lets the trainer patch this job's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rectrain_api import job as api
from rectrain_api.job import SPOT_PRESETS, spot_node_terms
from rectrain_api.quantity import parse_quantity
from rectrain_api.trainer_config import CHECKPOINT_DIR_ENV, JOB_NAME_ENV, JOB_NAMESPACE_ENV, JOB_UID_ENV, TRAINER_CONFIG_ENV
from rectrain_api.validation import check_spec

from rectrain_operator import podgroup

CONTAINER_NAME = "trainer"
TRAINER_COMMAND = ["rectrain-train"]
LAUNCHER_COMMAND = ["rectrain-launch"]
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class JobRef:
    """Identity of a RecTrainJob (for names and ownerReferences)."""

    name: str
    namespace: str
    uid: str


# ------------------------------------------------------------------------------------ names


def service_name(ref: JobRef) -> str:
    return ref.name


def hostname(ref: JobRef, rank: int) -> str:
    return f"{ref.name}-{rank}"


def pod_name(ref: JobRef, rank: int, attempt: int) -> str:
    return f"{ref.name}-{rank}-a{attempt}"


def trainer_account_name(ref: JobRef) -> str:
    return f"{ref.name}-trainer"


def master_addr(ref: JobRef) -> str:
    """Rank 0's DNS name: <hostname>.<headless service> (resolves via the namespace search path)."""
    return f"{hostname(ref, 0)}.{service_name(ref)}"


# ------------------------------------------------------------------------------ validation


def validate(spec: api.RecTrainJobSpec, ref: JobRef) -> list[str]:
    """What the schema cannot express (rectrain_api.validation, shared with the trainer and the
    kubectl plugin). Each message names the field. Empty means valid."""
    return check_spec(spec, ref.name)


# ---------------------------------------------------------------------------------- children


def labels(ref: JobRef) -> dict[str, str]:
    return {api.LABEL_JOB_NAME: ref.name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def owner_reference(ref: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ref: JobRef, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": {**labels(ref), **(extra_labels or {})},
        "ownerReferences": [owner_reference(ref)],
    }


def build_service(spec: api.RecTrainJobSpec, ref: JobRef) -> dict[str, Any]:
    """Headless Service: gives each rank pod the DNS name <job>-<rank>.<job>."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ref, service_name(ref)),
        "spec": {
            "clusterIP": "None",
            "selector": {api.LABEL_JOB_NAME: ref.name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": spec.masterPort, "targetPort": spec.masterPort, "protocol": "TCP"}],
        },
    }


def build_rbac(ref: JobRef) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding: get this job, get/patch its status; nothing else."""
    name = trainer_account_name(ref)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ref, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(ref, name),
            "rules": [
                {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "resourceNames": [ref.name], "verbs": ["get"]},
                {
                    "apiGroups": [api.GROUP],
                    "resources": [f"{api.PLURAL}/status"],
                    "resourceNames": [ref.name],
                    "verbs": ["get", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(ref, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}],
        },
    ]


def omp_threads(spec: api.RecTrainJobSpec) -> int:
    if spec.resources.cpu is None:
        return 1
    cpu = parse_quantity(spec.resources.cpu) or Decimal(1)
    return max(1, int(cpu // spec.procs))


def build_env(spec: api.RecTrainJobSpec, ref: JobRef, rank: int, size: int | None = None) -> list[dict[str, Any]]:
    """Rendezvous (plain torch.distributed and torchrun PET_*), NCCL, threads, job identity, checkpoint
    directory, trainer config (built-in trainer only), for rank pod `rank` of a gang of `size` pods
    (default: the size the job aims for). A custom spec.command gets the same, less the trainer config."""
    procs = spec.procs
    size = spec.desired_replicas if size is None else size
    addr = master_addr(ref)
    port = str(spec.masterPort)
    env: dict[str, str] = {
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
        "WORLD_SIZE": str(size * procs),
        "RANK": str(rank * procs),
        "NODE_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(procs),
        "PET_NNODES": str(size),
        "PET_NPROC_PER_NODE": str(procs),
        "PET_NODE_RANK": str(rank),
        "PET_MASTER_ADDR": addr,
        "PET_MASTER_PORT": port,
        "OMP_NUM_THREADS": str(omp_threads(spec)),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    if spec.nccl.socketIfname:
        env["NCCL_SOCKET_IFNAME"] = spec.nccl.socketIfname
    if spec.nccl.ibDisable is not None:
        env["NCCL_IB_DISABLE"] = "1" if spec.nccl.ibDisable else "0"
    if spec.nccl.debug:
        env["NCCL_DEBUG"] = spec.nccl.debug
    env.update(spec.nccl.env)
    env[JOB_NAME_ENV] = ref.name
    env[JOB_NAMESPACE_ENV] = ref.namespace
    if ref.uid:
        env[JOB_UID_ENV] = ref.uid
    if spec.trainer.checkpoint.directory:
        env[CHECKPOINT_DIR_ENV] = spec.trainer.checkpoint.directory
    if not spec.custom_command:
        env[TRAINER_CONFIG_ENV] = spec.trainer.model_dump_json(exclude_none=True)
    out = [{"name": k, "value": v} for k, v in env.items()]
    overrides = {e.name for e in spec.pod.env}
    out = [e for e in out if e["name"] not in overrides]
    out += [e.model_dump(exclude_none=True) for e in spec.pod.env]
    return out


def trainer_command(spec: api.RecTrainJobSpec) -> list[str]:
    """The container's command. spec.command runs as given: with several ranks per pod it starts them
    itself (torchrun reads the PET_* variables). The built-in trainer runs alone with one rank per
    pod, else under rectrain-launch (torchrun), one process per GPU."""
    if spec.command is not None:
        return list(spec.command)
    if spec.procs > 1:
        return [*LAUNCHER_COMMAND, *TRAINER_COMMAND]
    return list(TRAINER_COMMAND)


def _tolerations(spec: api.RecTrainJobSpec) -> list[dict[str, Any]]:
    tols: list[dict[str, Any]] = []
    if spec.gpusPerReplica > 0:
        tols.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if spec.spot.enabled:
        tols += SPOT_PRESETS[spec.spot.provider]["tolerations"]
        tols += [t.model_dump(exclude_none=True) for t in spec.spot.tolerations]
    tols += [t.model_dump(exclude_none=True) for t in spec.scheduling.tolerations]
    unique: list[dict[str, Any]] = []
    for t in tols:
        if t not in unique:
            unique.append(t)
    return unique


def _spot_terms(spec: api.RecTrainJobSpec) -> list[dict[str, str]]:
    return spot_node_terms(spec.spot)


def _affinity(spec: api.RecTrainJobSpec) -> dict[str, Any] | None:
    if not spec.spot.enabled:
        return None
    terms = [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(term.items())]}
        for term in _spot_terms(spec)
    ]
    if not terms:
        return None
    if spec.spot.mode == "required":
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": t} for t in terms]
        }
    }


def _resources(spec: api.RecTrainJobSpec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu:
        requests["cpu"] = r.cpu
    if r.memory:
        requests["memory"] = r.memory
        limits["memory"] = r.memoryLimit or r.memory
    elif r.memoryLimit:
        limits["memory"] = r.memoryLimit
    if r.cpuLimit:
        limits["cpu"] = r.cpuLimit
    if spec.gpusPerReplica > 0:
        limits[GPU_RESOURCE] = str(spec.gpusPerReplica)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


DEFAULT_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def build_pod(spec: api.RecTrainJobSpec, ref: JobRef, rank: int, attempt: int, size: int | None = None) -> dict[str, Any]:
    """The Pod of one rank in one gang attempt of `size` rank pods (default: the size the job aims for)."""
    size = spec.desired_replicas if size is None else size
    gang_labels, our_annotations = podgroup.pod_metadata(spec, ref.name, attempt, size)
    our_labels = {api.LABEL_RANK: str(rank), api.LABEL_ATTEMPT: str(attempt), **gang_labels}
    meta = _meta(ref, pod_name(ref, rank, attempt), our_labels)
    # Our labels and annotations win over the user's: the operator selects, counts and gangs its
    # pods by them. (Validation refuses user values for these keys; this holds without it too.)
    meta["labels"] = {**spec.pod.labels, **meta["labels"]}
    annotations = {**spec.pod.annotations, **our_annotations}
    if annotations:
        meta["annotations"] = annotations
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.resources.shmSize:
        shm["sizeLimit"] = spec.resources.shmSize
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": trainer_command(spec),
        **({"args": list(spec.args)} if spec.args else {}),
        "env": build_env(spec, ref, rank, size),
        "ports": [{"name": "rendezvous", "containerPort": spec.masterPort, "protocol": "TCP"}],
        "resources": _resources(spec),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]
        + [m.model_dump(exclude_none=True) for m in spec.pod.volumeMounts],
        "securityContext": dict(CONTAINER_SECURITY),
        # A failing trainer's last log lines become the pod's termination message, and so the job's.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.trainer.reporting.metricsPort and not spec.custom_command:  # the built-in trainer serves it
        container["ports"].append({"name": "metrics", "containerPort": spec.trainer.reporting.metricsPort, "protocol": "TCP"})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": hostname(ref, rank),
        "subdomain": service_name(ref),
        "serviceAccountName": spec.pod.serviceAccountName or trainer_account_name(ref),
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": shm}] + [dict(v) for v in spec.pod.volumes],
        # Merged, not replaced: adding fsGroup must not silently drop runAsNonRoot or seccomp.
        "securityContext": {**DEFAULT_POD_SECURITY, **(spec.pod.securityContext or {})},
        "terminationGracePeriodSeconds": 30,
        **_placement(spec),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def _placement(spec: api.RecTrainJobSpec) -> dict[str, Any]:
    """Where a rank pod may run and who schedules it (shared by rank pods and capacity probes)."""
    placement: dict[str, Any] = {}
    tolerations = _tolerations(spec)
    if tolerations:
        placement["tolerations"] = tolerations
    affinity = _affinity(spec)
    if affinity:
        placement["affinity"] = affinity
    if spec.scheduling.nodeSelector:
        placement["nodeSelector"] = dict(spec.scheduling.nodeSelector)
    scheduler = podgroup.scheduler_name(spec)
    if scheduler:
        placement["schedulerName"] = scheduler
    if spec.scheduling.priorityClassName:
        placement["priorityClassName"] = spec.scheduling.priorityClassName
    if spec.pod.imagePullSecrets:
        placement["imagePullSecrets"] = [s.model_dump() for s in spec.pod.imagePullSecrets]
    return placement


def build_pods(spec: api.RecTrainJobSpec, ref: JobRef, attempt: int, ranks: list[int] | None = None,
               size: int | None = None) -> list[dict[str, Any]]:
    size = spec.desired_replicas if size is None else size
    return [build_pod(spec, ref, r, attempt, size) for r in (range(size) if ranks is None else ranks)]


def build_podgroup(spec: api.RecTrainJobSpec, ref: JobRef, attempt: int, size: int | None = None) -> dict[str, Any] | None:
    """The PodGroup of one attempt (rectrain_operator.podgroup); None without spec.scheduling.gang."""
    size = spec.desired_replicas if size is None else size
    return podgroup.build(spec, ref.name, ref.namespace, attempt, size, podgroup.pod_requests(_resources(spec)),
                          owner_reference(ref), labels(ref))


# A capacity probe only has to be placed and hold its room; `sleep` is in every trainer image.
PROBE_COMMAND = ["sleep", "infinity"]


def probe_name(ref: JobRef, index: int) -> str:
    return f"{ref.name}-probe-{index}"


def build_probe(spec: api.RecTrainJobSpec, ref: JobRef, index: int) -> dict[str, Any]:
    """A capacity probe of an elastic job that runs below maxReplicas: a pod with one rank pod's
    resources, placement and priority that does nothing. Once the scheduler places it, the room of
    one more rank exists and stays held until the gang grows into it (the probe is deleted first)."""
    container = {
        "name": "probe",
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": list(PROBE_COMMAND),
        "resources": _resources(spec),
        "securityContext": dict(CONTAINER_SECURITY),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "automountServiceAccountToken": False,
        "securityContext": {**DEFAULT_POD_SECURITY, **(spec.pod.securityContext or {})},
        "terminationGracePeriodSeconds": 1,
        **_placement(spec),
    }
    meta = _meta(ref, probe_name(ref, index), {api.LABEL_PROBE: str(index)})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
