"""Pure builders for gang scheduling: the PodGroup of one attempt, the pod metadata that puts a rank
pod in it, and what a PodGroup's status says about the gang (for the GangScheduled condition).

Three ways to have the whole gang placed at once (spec.scheduling):

- gang volcano: a scheduling.volcano.sh/v1beta1 PodGroup; pods carry the annotation
  scheduling.k8s.io/group-name and schedulerName volcano.
- gang coscheduling (kubernetes-sigs/scheduler-plugins): a scheduling.x-k8s.io/v1alpha1 PodGroup;
  pods carry the label scheduling.x-k8s.io/pod-group and the plugin's scheduler name.
- a Kueue queue (queueName, unless gang volcano): no PodGroup object; pods carry
  kueue.x-k8s.io/queue-name, pod-group-name and the pod-group-total-count annotation, and Kueue admits
  the group as one Workload. It combines with gang coscheduling (Kueue admits, the plugin places).

One PodGroup per attempt, named like the attempt's Kueue group (<job>-a<attempt>): an attempt's size
can differ (elastic), the schedulers keep per-group state (Volcano's phase, the plugin's scheduled
count and timeout) that must start afresh with new pods, and a new name never races the deletion of the
old one. The operator deletes the groups of earlier attempts when it starts a new one; the job's
ownerReference (garbage collection) and ttlSecondsAfterFinished delete the rest.

Nothing here calls the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rectrain_api import job as api
from rectrain_api.quantity import parse_quantity

# scheduler-plugins' own charts run the coscheduling plugin as a second scheduler under this name.
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"
VOLCANO_SCHEDULER = "volcano"


@dataclass(frozen=True)
class GroupKind:
    """Where a gang scheduler's PodGroups live in the API."""

    group: str
    version: str
    plural: str = "podgroups"
    kind: str = "PodGroup"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


VOLCANO = GroupKind("scheduling.volcano.sh", "v1beta1")
COSCHEDULING = GroupKind("scheduling.x-k8s.io", "v1alpha1")
KINDS = {"volcano": VOLCANO, "coscheduling": COSCHEDULING}


def kind_for(spec: api.RecTrainJobSpec) -> GroupKind | None:
    """The PodGroup API of the job's gang scheduler; None without one."""
    return KINDS.get(spec.scheduling.gang)


def group_name(job_name: str, attempt: int) -> str:
    """The PodGroup (and Kueue pod group) of one attempt."""
    return f"{job_name}-a{attempt}"


def attempt_of(group: dict[str, Any]) -> int | None:
    """The attempt a PodGroup belongs to (its rectrain.io/attempt label)."""
    try:
        return int(((group.get("metadata") or {}).get("labels") or {})[api.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None


def min_member(spec: api.RecTrainJobSpec, size: int) -> int:
    """Pods the scheduler must place together: all rank pods of the attempt, or an elastic job's
    minReplicas (it runs with fewer than its size rather than waiting; lifecycle shrinks it)."""
    return min(size, spec.elastic.minReplicas) if spec.elastic else size


def scheduler_name(spec: api.RecTrainJobSpec) -> str | None:
    """schedulerName of rank pods: the spec's, else the gang scheduler's usual name, else the default's (None)."""
    if spec.scheduling.schedulerName:
        return spec.scheduling.schedulerName
    return {"volcano": VOLCANO_SCHEDULER, "coscheduling": COSCHEDULING_SCHEDULER}.get(spec.scheduling.gang)


def pod_metadata(spec: api.RecTrainJobSpec, job_name: str, attempt: int, size: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that make a rank pod of this attempt a member of its gang."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    name = group_name(job_name, attempt)
    if spec.scheduling.gang == "volcano":
        annotations[api.VOLCANO_GROUP_ANNOTATION] = name
    elif spec.scheduling.gang == "coscheduling":
        labels[api.COSCHEDULING_GROUP_LABEL] = name
    queue = spec.scheduling.kueue_queue
    if queue:
        labels[api.KUEUE_QUEUE_LABEL] = queue
        labels[api.KUEUE_GROUP_LABEL] = name
        annotations[api.KUEUE_COUNT_ANNOTATION] = str(size)
    return labels, annotations


def pod_requests(resources: dict[str, Any]) -> dict[str, str]:
    """What one pod requests: its requests, plus each limit without a request (the API server
    defaults such a request to the limit; nvidia.com/gpu is only ever a limit)."""
    requests = dict(resources.get("requests") or {})
    for key, value in (resources.get("limits") or {}).items():
        requests.setdefault(key, value)
    return requests


def min_resources(per_pod: dict[str, str], members: int) -> dict[str, str]:
    """per_pod x members, as quantities (cpu in millicores when fractional, the rest as plain numbers)."""
    out: dict[str, str] = {}
    for key, value in sorted(per_pod.items()):
        amount = parse_quantity(value)
        if amount is None:
            continue
        out[key] = _format(key, amount * members)
    return out


def _format(key: str, amount: Decimal) -> str:
    if amount == amount.to_integral_value():
        return str(int(amount))
    if key == "cpu":
        return f"{int((amount * 1000).to_integral_value())}m"
    return str(int(amount.to_integral_value(rounding="ROUND_CEILING")))


def build(spec: api.RecTrainJobSpec, job_name: str, namespace: str, attempt: int, size: int,
          per_pod: dict[str, str], owner: dict[str, Any], labels: dict[str, str]) -> dict[str, Any] | None:
    """The PodGroup of one attempt of `size` rank pods (None without a gang scheduler). `per_pod` is
    one rank pod's requests; `owner` the job's ownerReference; `labels` the job's child labels."""
    kind = kind_for(spec)
    if kind is None:
        return None
    members = min_member(spec, size)
    group_spec: dict[str, Any] = {"minMember": members}
    resources = min_resources(per_pod, members)
    if resources:
        group_spec["minResources"] = resources
    if kind is VOLCANO:
        if spec.scheduling.queueName:
            group_spec["queue"] = spec.scheduling.queueName
        if spec.scheduling.priorityClassName:
            group_spec["priorityClassName"] = spec.scheduling.priorityClassName
    elif spec.scheduling.scheduleTimeoutSeconds is not None:
        group_spec["scheduleTimeoutSeconds"] = spec.scheduling.scheduleTimeoutSeconds
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {
            "name": group_name(job_name, attempt),
            "namespace": namespace,
            "labels": {**labels, api.LABEL_ATTEMPT: str(attempt)},
            "ownerReferences": [owner],
        },
        "spec": group_spec,
    }


# ------------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class GangState:
    """What the gang scheduler says about the attempt's PodGroup (Observation.gang)."""

    phase: str | None  # the PodGroup's status.phase; None when it has none yet
    message: str | None = None  # the newest condition's reason/message (e.g. Volcano's Unschedulable)
    missing: bool = False  # no PodGroup of this attempt exists (yet)


# Volcano: Pending -> Inqueue -> Running (-> Completed); coscheduling: Pending -> PreScheduling ->
# Scheduling -> Scheduled -> Running (-> Finished | Failed). These mean the whole gang was placed.
SCHEDULED_PHASES = ("Running", "Scheduled", "Completed", "Finished")
WAITING = {
    "Pending": "the gang scheduler has not admitted the gang yet (queue or quota full, or not enough room for minMember pods)",
    "Inqueue": "admitted to its queue; waiting for room for all minMember pods at once",
    "PreScheduling": "waiting for all minMember pods to be created",
    "Scheduling": "placing the gang: some pods are waiting for the rest",
    "Unknown": "some pods are placed but fewer than minMember run",
    "Failed": "the gang could not be placed within scheduleTimeoutSeconds",
}


def read_state(group: dict[str, Any] | None) -> GangState:
    """The GangState of a PodGroup as the API returned it (None: it does not exist)."""
    if group is None:
        return GangState(None, missing=True)
    status = group.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    newest = max(conditions, key=lambda c: str(c.get("lastTransitionTime") or ""), default=None)
    message = None
    if newest is not None and (newest.get("message") or newest.get("reason")):
        message = ": ".join(str(x) for x in (newest.get("reason"), newest.get("message")) if x)
    return GangState(status.get("phase") or None, message)


def condition(state: GangState, name: str) -> tuple[bool, str, str]:
    """(status, reason, message) of the job's GangScheduled condition for PodGroup `name`."""
    if state.missing:
        return False, "PodGroupMissing", f"PodGroup {name} does not exist yet"
    phase = state.phase or "Pending"
    detail = f" ({state.message})" if state.message else ""
    if phase in SCHEDULED_PHASES:
        return True, phase, f"PodGroup {name} is {phase}: the whole gang is placed{detail}"
    why = WAITING.get(phase, "waiting for the gang scheduler")
    return False, phase, f"PodGroup {name} is {phase}: {why}{detail}"


def missing_api_message(spec: api.RecTrainJobSpec) -> str:
    """Why a job whose gang scheduler's PodGroup API the cluster does not serve fails (field path first)."""
    gang = spec.scheduling.gang
    kind = KINDS[gang]
    project = "Volcano" if gang == "volcano" else "the scheduler-plugins coscheduling plugin"
    return (f"spec.scheduling.gang: {gang} needs the PodGroup API {kind.api_version} (CRD {kind.crd_name}), which this "
            f"cluster does not serve: install {project}, or set spec.scheduling.gang to none")
