"""Pure builders: a RecTrainJob's spec -> manifest dicts for its children.

Nothing here calls the Kubernetes API; every function takes plain data and returns plain data.
Children: one headless Service (stable DNS for rendezvous), one Pod per rank and attempt, and a
per-job ServiceAccount/Role/RoleBinding that lets the trainer patch this job's status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rectrain_api import job as api
from rectrain_api.trainer_config import JOB_NAME_ENV, JOB_NAMESPACE_ENV, TRAINER_CONFIG_ENV

CONTAINER_NAME = "trainer"
TRAINER_COMMAND = ["rectrain-train"]
GPU_RESOURCE = "nvidia.com/gpu"
MAX_WORLD_SIZE = 4096

SPOT_PRESETS: dict[str, dict[str, Any]] = {
    # Each preset: alternative node-selector terms (ORed) and tolerations for the provider's spot taint.
    "gke": {
        "terms": [{"cloud.google.com/gke-spot": "true"}],
        "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    },
    "eks": {
        "terms": [{"eks.amazonaws.com/capacityType": "SPOT"}, {"karpenter.sh/capacity-type": "spot"}],
        "tolerations": [],
    },
    "aks": {
        "terms": [{"kubernetes.azure.com/scalesetpriority": "spot"}],
        "tolerations": [
            {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}
        ],
    },
    "generic": {"terms": [], "tolerations": []},
}

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


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
    """What the schema cannot express. Each message names the field. Empty means valid."""
    errors: list[str] = []
    if not _DNS1035.match(ref.name):
        errors.append(f"metadata.name: {ref.name!r} must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter): it names the headless Service")
    longest = hostname(ref, spec.replicas - 1)
    if len(longest) > 63 or len(pod_name(ref, spec.replicas - 1, 9999)) > 253:
        errors.append(f"metadata.name: too long for {spec.replicas} ranks: pod hostname {longest!r} exceeds 63 characters")
    if spec.gpusPerReplica > 0 and spec.procsPerReplica not in (None, spec.gpusPerReplica):
        errors.append(
            f"spec.procsPerReplica: {spec.procsPerReplica} conflicts with spec.gpusPerReplica {spec.gpusPerReplica} (one process per GPU); leave it empty"
        )
    if spec.world_size > MAX_WORLD_SIZE:
        errors.append(f"spec.replicas: world size {spec.world_size} (replicas x procs) exceeds {MAX_WORLD_SIZE}")
    training = spec.trainer.training
    if spec.gpusPerReplica == 0:
        if training.precision == "fp16":
            errors.append("spec.trainer.training.precision: fp16 needs GPUs (set spec.gpusPerReplica > 0, or use bf16 on CPU)")
        if training.device == "cuda":
            errors.append("spec.trainer.training.device: cuda needs GPUs (set spec.gpusPerReplica > 0)")
        if training.backend == "nccl":
            errors.append("spec.trainer.training.backend: nccl needs GPUs (set spec.gpusPerReplica > 0, or use gloo)")
    model = spec.trainer.model
    if model.bottomMlp and model.bottomMlp[-1] != model.embeddingDim:
        errors.append(
            f"spec.trainer.model.bottomMlp: last size {model.bottomMlp[-1]} must equal spec.trainer.model.embeddingDim {model.embeddingDim}"
        )
    spot = spec.spot
    if spot.enabled and spot.provider == "generic" and not spot.nodeLabels:
        errors.append("spec.spot.nodeLabels: provider generic needs the labels that identify spot nodes")
    if spot.enabled and spot.mode == "required":
        for term in _spot_terms(spec):
            for key, value in term.items():
                if key in spec.scheduling.nodeSelector and spec.scheduling.nodeSelector[key] != value:
                    errors.append(
                        f"spec.scheduling.nodeSelector: {key}={spec.scheduling.nodeSelector[key]} contradicts spec.spot (required {key}={value})"
                    )
    for q in ("cpu", "memory", "cpuLimit", "memoryLimit", "shmSize"):
        value = getattr(spec.resources, q)
        if value is not None and parse_quantity(value) is None:
            errors.append(f"spec.resources.{q}: {value!r} is not a Kubernetes quantity")
    names = {v.get("name") for v in spec.pod.volumes}
    if None in names:
        errors.append("spec.pod.volumes: every volume needs a name")
    for m in spec.pod.volumeMounts:
        if m.name not in names and m.name != "dshm":
            errors.append(f"spec.pod.volumeMounts: {m.name!r} is not in spec.pod.volumes")
    return errors


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
_SUFFIX = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str) -> Decimal | None:
    m = _QUANTITY.match(str(text).strip())
    if not m:
        return None
    number, suffix = Decimal(m.group(1)), m.group(2) or ""
    if suffix.startswith("e"):
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * Decimal(_SUFFIX[suffix])


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


def build_env(spec: api.RecTrainJobSpec, ref: JobRef, rank: int) -> list[dict[str, Any]]:
    """Rendezvous (plain torch.distributed and torchrun PET_*), NCCL, threads, job identity, trainer config."""
    procs = spec.procs
    addr = master_addr(ref)
    port = str(spec.masterPort)
    env: dict[str, str] = {
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
        "WORLD_SIZE": str(spec.world_size),
        "RANK": str(rank * procs),
        "NODE_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(procs),
        "PET_NNODES": str(spec.replicas),
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
    env[TRAINER_CONFIG_ENV] = spec.trainer.model_dump_json(exclude_none=True)
    out = [{"name": k, "value": v} for k, v in env.items()]
    overrides = {e.name for e in spec.pod.env}
    out = [e for e in out if e["name"] not in overrides]
    out += [e.model_dump(exclude_none=True) for e in spec.pod.env]
    return out


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
    terms = [dict(t) for t in SPOT_PRESETS[spec.spot.provider]["terms"]]
    if spec.spot.nodeLabels:
        terms = [{**t, **spec.spot.nodeLabels} for t in terms] or [dict(spec.spot.nodeLabels)]
    return terms


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


def build_pod(spec: api.RecTrainJobSpec, ref: JobRef, rank: int, attempt: int) -> dict[str, Any]:
    """The Pod of one rank in one gang attempt."""
    extra_labels = {**spec.pod.labels, api.LABEL_RANK: str(rank), api.LABEL_ATTEMPT: str(attempt)}
    annotations = dict(spec.pod.annotations)
    if spec.scheduling.queueName:
        extra_labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queueName
        extra_labels[KUEUE_GROUP_LABEL] = f"{ref.name}-a{attempt}"
        annotations[KUEUE_COUNT_ANNOTATION] = str(spec.replicas)
    meta = _meta(ref, pod_name(ref, rank, attempt), extra_labels)
    # Our labels win over user labels.
    meta["labels"] = {**spec.pod.labels, **meta["labels"]}
    if annotations:
        meta["annotations"] = annotations
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.resources.shmSize:
        shm["sizeLimit"] = spec.resources.shmSize
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": list(TRAINER_COMMAND),
        "env": build_env(spec, ref, rank),
        "ports": [{"name": "rendezvous", "containerPort": spec.masterPort, "protocol": "TCP"}],
        "resources": _resources(spec),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]
        + [m.model_dump(exclude_none=True) for m in spec.pod.volumeMounts],
        "securityContext": dict(CONTAINER_SECURITY),
        # A failing trainer's last log lines become the pod's termination message, and so the job's.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.trainer.reporting.metricsPort:
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
    }
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    affinity = _affinity(spec)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.scheduling.nodeSelector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.nodeSelector)
    if spec.scheduling.schedulerName:
        pod_spec["schedulerName"] = spec.scheduling.schedulerName
    if spec.scheduling.priorityClassName:
        pod_spec["priorityClassName"] = spec.scheduling.priorityClassName
    if spec.pod.imagePullSecrets:
        pod_spec["imagePullSecrets"] = [s.model_dump() for s in spec.pod.imagePullSecrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def build_pods(spec: api.RecTrainJobSpec, ref: JobRef, attempt: int, ranks: list[int] | None = None) -> list[dict[str, Any]]:
    return [build_pod(spec, ref, r, attempt) for r in (range(spec.replicas) if ranks is None else ranks)]
