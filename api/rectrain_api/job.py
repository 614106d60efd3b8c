"""The RecTrainJob custom resource: spec (written by users) and status (written by the operator,
except `status.progress` / `status.metrics`, which the trainer's rank 0 owns).

These models are the single source of the CRD schema (see `rectrain_api.crd`): every rule about
one field is a Field constraint here, so the API server enforces it too. Rules that relate fields
(which a Kubernetes 1.20 schema cannot express) live in `rectrain_api.validation`. They import
pydantic only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rectrain_api.progress import Progress, TrainingMetrics
from rectrain_api.quantity import QUANTITY_PATTERN
from rectrain_api.trainer_config import TrainerConfig

GROUP = "rectrain.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RecTrainJob"
PLURAL = "rectrainjobs"
SINGULAR = "rectrainjob"
SHORT_NAMES = ["rtj"]

# Labels and annotations the operator puts on children.
LABEL_JOB_NAME = "rectrain.io/job-name"
LABEL_RANK = "rectrain.io/rank"
LABEL_ATTEMPT = "rectrain.io/attempt"
LABEL_PROBE = "rectrain.io/capacity-probe"  # an elastic job's capacity probe (its index), never a rank
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "rectrain-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
# Gang scheduling (spec.scheduling.gang): how a rank pod names its PodGroup.
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"  # gang volcano
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"  # gang coscheduling (scheduler-plugins)
GANG_POLICIES = ("none", "volcano", "coscheduling")

# Pod labels and annotations users may not set in spec.pod: the operator selects and counts its pods
# by them (and Kueue forms the gang from them), so a user value would break that.
RESERVED_LABEL_PREFIX = f"{GROUP}/"
RESERVED_LABELS = (LABEL_MANAGED_BY, KUEUE_QUEUE_LABEL, KUEUE_GROUP_LABEL)
RESERVED_ANNOTATIONS = (KUEUE_COUNT_ANNOTATION,)

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")

AnyObject = dict[str, Any]


class _Model(BaseModel):
    """Unknown fields are errors (the API server prunes them; pydantic names them)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------------------- spec


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default).")
    value: str | None = Field(None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    tolerationSeconds: int | None = Field(None, description="How long a NoExecute taint is tolerated; empty means forever.")


class Resources(_Model):
    """Compute resources of each rank pod (its single `trainer` container)."""

    cpu: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="CPU request per pod, e.g. '4' or '500m'. Also sets OMP_NUM_THREADS = cpu / procs."
    )
    memory: str | None = Field(None, pattern=QUANTITY_PATTERN, description="Memory request per pod, e.g. '16Gi'.")
    cpuLimit: str | None = Field(None, pattern=QUANTITY_PATTERN, description="CPU limit per pod; empty means none.")
    memoryLimit: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Memory limit per pod; empty means equal to the memory request."
    )
    shmSize: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        description="Size limit of the memory-backed /dev/shm volume (NCCL and data-loader workers need it); empty means unlimited.",
    )


class SpotPolicy(_Model):
    """Run on spot/preemptible capacity: node affinity and tolerations from a provider preset.
    Reclaims of spot nodes count as preemptions, never against runPolicy.backoffLimit."""

    enabled: bool = Field(False, description="Place rank pods on spot nodes and treat every signal exit (128+N) as a preemption (143 is one everywhere).")
    mode: Literal["required", "preferred"] = Field(
        "preferred", description="required: only spot nodes; preferred: spot nodes when available, otherwise any node."
    )
    provider: Literal["gke", "eks", "aks", "generic"] = Field(
        "generic",
        description=(
            "Preset for spot node labels and taints. gke: cloud.google.com/gke-spot=true (+toleration); "
            "eks: eks.amazonaws.com/capacityType=SPOT or karpenter.sh/capacity-type=spot; "
            "aks: kubernetes.azure.com/scalesetpriority=spot (+toleration); generic: nodeLabels below."
        ),
    )
    nodeLabels: dict[str, str] = Field(
        default_factory=dict, description="Labels that identify spot nodes (provider generic; added to other presets)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Extra tolerations for spot node taints.")


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


def spot_node_terms(spot: SpotPolicy) -> list[dict[str, str]]:
    """The node labels of spot nodes, as alternative terms (a node matching any term is spot): the
    provider preset's terms, each with spot.nodeLabels added (or spot.nodeLabels alone for generic).
    The builders turn them into node affinity; validation checks nodeSelector against them."""
    terms = [dict(t) for t in SPOT_PRESETS[spot.provider]["terms"]]
    if spot.nodeLabels:
        terms = [{**t, **spot.nodeLabels} for t in terms] or [dict(spot.nodeLabels)]
    return terms


class Scheduling(_Model):
    """Where and how rank pods are scheduled, and how the gang is admitted as a whole.

    One home per concept: `gang` picks the gang scheduler (and its PodGroup), `schedulerName` is the
    scheduler that places the pods (empty: the gang scheduler's usual name, else the default
    scheduler), `queueName` is the one queue (a Volcano Queue with gang volcano, else a Kueue LocalQueue)."""

    gang: Literal["none", "volcano", "coscheduling"] = Field(
        "none",
        description=(
            "Gang scheduler that places all rank pods of an attempt or none of them. none: no PodGroup; "
            "volcano: a scheduling.volcano.sh/v1beta1 PodGroup, pods scheduled by volcano; coscheduling: a "
            "scheduling.x-k8s.io/v1alpha1 PodGroup of the scheduler-plugins coscheduling plugin, pods scheduled by "
            "scheduler-plugins-scheduler. minMember is the rank pods of the attempt (elastic.minReplicas for an elastic job)."
        ),
    )
    scheduleTimeoutSeconds: int | None = Field(
        None, ge=1, description="gang coscheduling only: how long the plugin waits for the whole gang before it gives up on the pods it holds (PodGroup spec.scheduleTimeoutSeconds)."
    )
    schedulerName: str | None = Field(
        None,
        description=(
            "Scheduler for rank pods. Empty: 'volcano' with gang volcano, 'scheduler-plugins-scheduler' with gang "
            "coscheduling, else the default scheduler. Set it when the gang scheduler runs under another name."
        ),
    )
    priorityClassName: str | None = Field(None, description="PriorityClass of rank pods (and of a Volcano PodGroup).")
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Node labels every rank pod requires.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Extra tolerations of rank pods.")
    queueName: str | None = Field(
        None,
        description=(
            "The queue of the job. With gang volcano: the Volcano Queue of its PodGroup (empty: volcano's default queue). "
            "Otherwise a Kueue LocalQueue: rank pods form a Kueue pod group (labels kueue.x-k8s.io/queue-name, "
            "pod-group-name, annotation pod-group-total-count)."
        ),
    )

    @property
    def kueue_queue(self) -> str | None:
        """The Kueue LocalQueue of the pods (queueName, unless it names a Volcano queue)."""
        return self.queueName if self.gang != "volcano" else None


class RestartBackoff(_Model):
    """Delay before a gang restart: min(maxSeconds, initialSeconds * 2^(restarts so far))."""

    initialSeconds: float = Field(10.0, ge=0, description="Delay before the first restart, in seconds.")
    maxSeconds: float = Field(300.0, ge=0, description="Upper bound of the restart delay, in seconds.")


class RunPolicy(_Model):
    """Restarts, limits, clean-up and suspension."""

    backoffLimit: int = Field(
        3, ge=0, description=(
            "Application failures tolerated before the job fails (exit codes other than 0, 2 and 143, signal exits off spot, "
            "OOMKilled); each one restarts the whole gang. Exit code 2 (invalid configuration) fails the job at once."
        ),
    )
    maxPreemptions: int | None = Field(
        None, ge=0, description="Preemptions/disruptions tolerated before the job fails; empty means unlimited. Preemptions never consume backoffLimit."
    )
    restartBackoff: RestartBackoff = Field(default_factory=RestartBackoff, description="Delay before each gang restart.")
    ttlSecondsAfterFinished: int | None = Field(
        None, ge=0, description="Delete the pods, Service and RBAC this long after the job finished; the RecTrainJob itself is kept (GitOps-safe)."
    )
    activeDeadlineSeconds: int | None = Field(
        None, ge=1, description="Fail the job (reason DeadlineExceeded) when it has been active this long; resuming from suspension resets the clock."
    )
    suspend: bool = Field(False, description="true deletes the rank pods and sets phase Suspended; false again recreates them. Not a failure.")
    keepFailedPodsSeconds: int = Field(
        600, ge=0, description=(
            "After a gang restart, the failed attempt's pods that ended by themselves (the failing rank's among them) are "
            "kept, stopped, so that `kubectl logs` works on them, until the next attempt runs or at most this many seconds "
            "after the failure. 0 deletes them with the restart. The ranks still running at the failure are stopped by deletion."
        ),
    )
    rendezvousTimeoutSeconds: int | None = Field(
        None, ge=0, description=(
            "Watchdog: when no first training step is reported (status.progress, by rank 0, after a step every rank took "
            "part in) this many seconds after all ranks of an attempt run, the job gets condition Stalled and the gang "
            "restarts, counted as a failure against backoffLimit. 0 disables it. Empty: 600 for the built-in trainer, "
            "disabled for a custom spec.command (it may not report progress)."
        ),
    )


class NcclConfig(_Model):
    """NCCL settings passed as environment variables to every rank."""

    socketIfname: str | None = Field(None, description="NCCL_SOCKET_IFNAME: network interface(s) for NCCL sockets, e.g. 'eth0'.")
    ibDisable: bool | None = Field(None, description="NCCL_IB_DISABLE: true disables InfiniBand/RoCE; empty leaves NCCL's default.")
    debug: Literal["VERSION", "WARN", "INFO", "TRACE"] | None = Field(None, description="NCCL_DEBUG level.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (e.g. other NCCL_* knobs) for every rank.")


class EnvVar(_Model):
    """An environment variable (core/v1 EnvVar)."""

    name: str = Field(..., min_length=1, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    valueFrom: AnyObject | None = Field(None, description="Source of the value (core/v1 EnvVarSource).")


class VolumeMount(_Model):
    """A volume mount of the trainer container (core/v1 VolumeMount)."""

    name: str = Field(..., min_length=1, description="Name of a volume in pod.volumes.")
    mountPath: str = Field(..., min_length=1, description="Path in the container.")
    readOnly: bool | None = Field(None, description="Mount read-only.")
    subPath: str | None = Field(None, description="Sub-path of the volume to mount.")


class LocalObjectReference(_Model):
    """A reference to an object in the job's namespace."""

    name: str = Field(..., min_length=1, description="Object name.")


class PodOverrides(_Model):
    """Additions to every rank pod."""

    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables of the trainer container (they win over the operator's).")
    volumes: list[AnyObject] = Field(
        default_factory=list, description="Extra pod volumes (core/v1 Volume objects)."
    )
    volumeMounts: list[VolumeMount] = Field(default_factory=list, description="Extra volume mounts of the trainer container.")
    serviceAccountName: str | None = Field(
        None, description="Run rank pods under this ServiceAccount instead of the per-job '<job>-trainer' one (it then needs get/patch on rectrainjobs/status itself)."
    )
    imagePullSecrets: list[LocalObjectReference] = Field(default_factory=list, description="Secrets for pulling the image.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description=f"Extra pod annotations; {', '.join(RESERVED_ANNOTATIONS)} is the operator's."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=f"Extra pod labels; keys under {RESERVED_LABEL_PREFIX} and {', '.join(RESERVED_LABELS)} are the operator's.",
    )
    securityContext: AnyObject | None = Field(
        None,
        description="Pod securityContext fields merged over the restricted default (runAsNonRoot, runAsUser 1000, seccomp RuntimeDefault): a field given here overrides that field only.",
    )


class ElasticPolicy(_Model):
    """Let the gang shrink and grow with the capacity there is (spot reclaims, busy clusters).

    The job aims for maxReplicas rank pods. Rank pods the scheduler cannot place shrink the gang
    (never below minReplicas) instead of keeping it waiting; while it runs smaller, one pod per
    missing rank (a capacity probe: the rank's resources, placement and priority, running `sleep`)
    holds room as it appears, and once the probes are placed the gang grows back. A resize stops the
    ranks with SIGTERM (they checkpoint), then starts the new size from that checkpoint. Resizes are
    counted in status.resizes, never as failures or preemptions. Elastic jobs need
    trainer.checkpoint.directory and trainer.training.globalBatchSize (the global batch stays the same
    at every size, so a step means the same rows whatever the size). spec.replicas is not used."""

    minReplicas: int = Field(..., ge=1, le=1024, description="Fewest rank pods the job runs with; below this it waits for capacity.")
    maxReplicas: int = Field(..., ge=1, le=1024, description="Rank pods the job aims for (and starts with).")


class RecTrainJobSpec(_Model):
    """Desired state of a distributed recommendation-model training job."""

    image: str = Field(..., min_length=1, description="Container image with the rectrain trainer (entrypoint rectrain-train).")
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Image pull policy of rank pods.")
    command: list[str] | None = Field(
        None,
        min_length=1,
        description=(
            "Your own program instead of the built-in trainer, in exec form like a container's command "
            "(e.g. [python, /app/train.py] or [torchrun, /app/train.py]). It gets the same rendezvous environment "
            "(MASTER_*, WORLD_SIZE, RANK, torchrun's PET_*, NCCL, threads, RECTRAIN_JOB_NAME/NAMESPACE, "
            "RECTRAIN_CHECKPOINT_DIR) and reports progress with the rectrain_report SDK. With procsPerReplica > 1 "
            "start one process per local rank yourself: torchrun reads PET_*. Empty: the built-in trainer. "
            "See docs/custom-scripts.md."
        ),
    )
    args: list[str] | None = Field(
        None, description="Arguments appended to spec.command (or to the built-in trainer's command when command is empty)."
    )
    replicas: int = Field(1, ge=1, le=1024, description="Rank pods (nodes in torchrun terms); all of them form one gang.")
    gpusPerReplica: int = Field(
        0, ge=0, le=16, description="nvidia.com/gpu per pod; also the trainer processes per pod. 0 means a CPU job."
    )
    procsPerReplica: int | None = Field(
        None, ge=1, le=256, description="Trainer processes per pod for CPU jobs (default 1); with GPUs it must be empty or equal gpusPerReplica."
    )
    masterPort: int = Field(29500, ge=1, le=65535, description="Rendezvous port on rank 0 (MASTER_PORT).")
    resources: Resources = Field(default_factory=Resources, description="CPU/memory of each rank pod.")
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig,
        description=(
            "Trainer configuration, passed unchanged to every rank as JSON in RECTRAIN_TRAINER_CONFIG. With spec.command "
            "only checkpoint.directory may be set (it becomes RECTRAIN_CHECKPOINT_DIR); other fields are refused."
        ),
    )
    spot: SpotPolicy = Field(default_factory=SpotPolicy, description="Spot/preemptible capacity.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Scheduler, priority, node selection and Kueue queue.")
    runPolicy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, limits, TTL, deadline and suspension.")
    nccl: NcclConfig = Field(default_factory=NcclConfig, description="NCCL environment for every rank.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Additions to every rank pod.")
    elastic: ElasticPolicy | None = Field(
        None, description="Shrink and grow between minReplicas and maxReplicas rank pods with the capacity there is; spec.replicas is then not used."
    )

    @property
    def custom_command(self) -> bool:
        """The pods run the user's own program (spec.command), not the built-in trainer."""
        return self.command is not None

    @property
    def procs(self) -> int:
        """Trainer processes per pod."""
        if self.gpusPerReplica > 0:
            return self.gpusPerReplica
        return self.procsPerReplica or 1

    @property
    def world_size(self) -> int:
        """Ranks at the size the job aims for."""
        return self.desired_replicas * self.procs

    @property
    def desired_replicas(self) -> int:
        """Rank pods the job aims for: elastic.maxReplicas for an elastic job, else replicas."""
        return self.elastic.maxReplicas if self.elastic else self.replicas

    @property
    def min_replicas(self) -> int:
        """Fewest rank pods the job runs with: elastic.minReplicas, else all of them."""
        return self.elastic.minReplicas if self.elastic else self.replicas


# ------------------------------------------------------------------------------------- status


class Condition(_Model):
    """A condition of the job (Created, Running, Restarting, Succeeded, Failed, Suspended)."""

    type: str = Field(..., description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str | None = Field(None, description="Machine-readable reason in CamelCase.")
    message: str | None = Field(None, description="Human-readable explanation.")
    lastTransitionTime: str | None = Field(None, description="RFC 3339 time the status last changed.")


class ReplicaCounts(_Model):
    """Rank pods of the current attempt by state."""

    active: int = Field(0, ge=0, description="Pods pending or running.")
    running: int = Field(0, ge=0, description="Pods running.")
    succeeded: int = Field(0, ge=0, description="Pods that exited 0.")
    failed: int = Field(0, ge=0, description="Pods that failed.")


class LastFailure(_Model):
    """The most recent rank failure and how it was classified."""

    cause: Literal["preemption", "failure"] = Field(..., description="preemption (not counted against backoffLimit) or failure (application).")
    rank: int | None = Field(None, description="Rank whose pod failed first.")
    reason: str | None = Field(None, description="Pod/container reason, e.g. Evicted, PodDeleted, Error, OOMKilled.")
    exitCode: int | None = Field(None, description="Trainer container exit code, when it exited.")
    message: str | None = Field(None, description="Human-readable detail.")
    time: str | None = Field(None, description="RFC 3339 time it was observed.")


class RecTrainJobStatus(_Model):
    """Observed state. The operator writes everything except progress and metrics (the trainer's)."""

    phase: Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"] | None = Field(
        None, description="Pending, Running (all ranks running), Restarting (gang restart after backoff), Succeeded, Failed or Suspended."
    )
    reason: str | None = Field(
        None,
        description=(
            "Why the job is in its phase, in one word: the reason of its newest true condition (e.g. InvalidSpec, "
            "BackoffLimitExceeded, AllRanksRunning); the REASON column of kubectl get rtj -o wide."
        ),
    )
    message: str | None = Field(None, description="That condition's message: what happened, in words (the MESSAGE column of -o wide).")
    replicas: int | None = Field(None, ge=0, description="Rank pods of the current attempt (its size; the world size is this x procs).")
    desiredReplicas: int | None = Field(
        None, ge=0, description="Rank pods the job aims for: spec.replicas, or elastic.maxReplicas for an elastic job."
    )
    resizes: int | None = Field(None, ge=0, description="Elastic resizes so far (never counted as failures or preemptions).")
    readyReplicas: int | None = Field(None, ge=0, description="Rank pods of the current attempt that are running.")
    ready: str | None = Field(None, description="readyReplicas/replicas, for kubectl get.")
    replicaCounts: ReplicaCounts | None = Field(None, description="Rank pods of the current attempt by state.")
    attempt: int | None = Field(None, ge=0, description="Gang attempt; rank pods are named <job>-<rank>-a<attempt>. Increases on every restart and resume.")
    restarts: int | None = Field(None, ge=0, description="Gang restarts so far (failures + preemptions that were retried).")
    failures: int | None = Field(None, ge=0, description="Application failures so far (compared with runPolicy.backoffLimit).")
    preemptions: int | None = Field(None, ge=0, description="Preemptions/disruptions so far (compared with runPolicy.maxPreemptions).")
    lastFailure: LastFailure | None = Field(None, description="The most recent rank failure and its classification.")
    restartAfter: str | None = Field(None, description="RFC 3339 time the pending gang restart happens (phase Restarting).")
    startTime: str | None = Field(None, description="RFC 3339 time the job became active (reset on resume); activeDeadlineSeconds counts from it.")
    firstRunningTime: str | None = Field(None, description="RFC 3339 time all ranks first ran.")
    completionTime: str | None = Field(None, description="RFC 3339 time the job finished (Succeeded or Failed).")
    childrenDeletedTime: str | None = Field(None, description="RFC 3339 time ttlSecondsAfterFinished deleted the pods, Service and RBAC.")
    observedGeneration: int | None = Field(None, description="metadata.generation the operator last acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="Created, Running, Restarting, Succeeded, Failed, Suspended.")
    progress: Progress | None = Field(None, description="Training progress, written by the trainer's rank 0 (never by the operator).")
    metrics: TrainingMetrics | None = Field(None, description="Evaluation metrics, written by the trainer's rank 0 (never by the operator).")


# Fields of the status the operator owns (it never writes the others).
TRAINER_STATUS_FIELDS = ("progress", "metrics")
OPERATOR_STATUS_FIELDS = tuple(f for f in RecTrainJobStatus.model_fields if f not in TRAINER_STATUS_FIELDS)


class RecTrainJob(_Model):
    """A distributed recommendation-model (DLRM) training job: one pod per rank, gang-restarted
    on failure, surviving spot preemptions."""

    apiVersion: str = Field(API_VERSION, description="rectrain.io/v1alpha1")
    kind: str = Field(KIND, description="RecTrainJob")
    metadata: AnyObject = Field(default_factory=dict, description="Standard object metadata.")
    spec: RecTrainJobSpec = Field(..., description="Desired state.")
    status: RecTrainJobStatus | None = Field(None, description="Observed state.")
