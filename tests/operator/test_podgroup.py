"""Gang scheduling, pure parts: the PodGroup builders (Volcano, coscheduling), the pods' gang metadata
(and Kueue's pod-group keys), the validation rules of spec.scheduling, and the GangScheduled condition."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from rectrain_api.job import RecTrainJobSpec
from rectrain_api.validation import check_spec
from rectrain_operator import builders, podgroup
from rectrain_operator import lifecycle as lc

REF = builders.JobRef("dlrm", "team-a", "uid-1")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ELASTIC_TRAINER = {"checkpoint": {"directory": "/ckpt"}, "training": {"globalBatchSize": 1024}}


def spec(**kw) -> RecTrainJobSpec:
    return RecTrainJobSpec.model_validate({"image": "rectrain:dev", **kw})


def test_volcano_podgroup_and_pods():
    s = spec(replicas=4, gpusPerReplica=2, resources={"cpu": "1500m", "memory": "3Gi"},
             scheduling={"gang": "volcano", "queueName": "research", "priorityClassName": "high"})
    group = builders.build_podgroup(s, REF, attempt=3)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1" and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "dlrm-a3" and group["metadata"]["namespace"] == "team-a"
    assert group["metadata"]["ownerReferences"] == [builders.owner_reference(REF)]
    assert group["metadata"]["labels"]["rectrain.io/job-name"] == "dlrm"
    assert group["metadata"]["labels"]["rectrain.io/attempt"] == "3"
    # 4 pods x (1.5 cpu, 3Gi, 2 GPUs); the GPU is a limit only, which is also its request.
    assert group["spec"] == {"minMember": 4, "queue": "research", "priorityClassName": "high",
                             "minResources": {"cpu": "6", "memory": str(12 * 2**30), "nvidia.com/gpu": "8"}}
    pod = builders.build_pod(s, REF, rank=1, attempt=3)
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "dlrm-a3"
    assert pod["spec"]["schedulerName"] == "volcano"
    # With gang volcano the queue is Volcano's: no Kueue keys.
    assert not any(k.startswith("kueue.x-k8s.io/") for k in {**pod["metadata"]["labels"], **pod["metadata"]["annotations"]})


def test_coscheduling_podgroup_pods_and_scheduler_name():
    s = spec(replicas=3, resources={"cpu": "250m", "memory": "512Mi"},
             scheduling={"gang": "coscheduling", "scheduleTimeoutSeconds": 120})
    group = builders.build_podgroup(s, REF, attempt=0)
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {"minMember": 3, "scheduleTimeoutSeconds": 120,
                             "minResources": {"cpu": "750m", "memory": str(3 * 512 * 2**20)}}
    pod = builders.build_pod(s, REF, rank=0, attempt=0)
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "dlrm-a0"
    assert pod["spec"]["schedulerName"] == podgroup.COSCHEDULING_SCHEDULER == "scheduler-plugins-scheduler"
    assert "scheduling.k8s.io/group-name" not in (pod["metadata"].get("annotations") or {})
    # The plugin running under another name: spec.scheduling.schedulerName wins, for probes too.
    named = spec(replicas=3, scheduling={"gang": "coscheduling", "schedulerName": "gang-scheduler"})
    assert builders.build_pod(named, REF, 0, 0)["spec"]["schedulerName"] == "gang-scheduler"
    assert builders.build_probe(named, REF, 0)["spec"]["schedulerName"] == "gang-scheduler"


def test_elastic_min_member_and_attempt_size():
    s = spec(elastic={"minReplicas": 2, "maxReplicas": 6}, resources={"cpu": "1"}, trainer=ELASTIC_TRAINER,
             scheduling={"gang": "coscheduling"})
    group = builders.build_podgroup(s, REF, attempt=1, size=4)
    assert group["spec"]["minMember"] == 2 and group["spec"]["minResources"] == {"cpu": "2"}
    # A gang smaller than minReplicas never happens, but minMember never exceeds the pods there are.
    assert podgroup.min_member(s, 1) == 1


def test_no_gang_no_podgroup_and_default_scheduler():
    s = spec(replicas=2)
    assert builders.build_podgroup(s, REF, 0) is None
    pod = builders.build_pod(s, REF, 0, 0)
    assert "schedulerName" not in pod["spec"]
    assert not any("pod-group" in k or "group-name" in k for k in pod["metadata"]["labels"])


def test_kueue_pod_group_with_and_without_coscheduling():
    s = spec(replicas=2, scheduling={"queueName": "team-q"})
    pod = builders.build_pod(s, REF, rank=1, attempt=5)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-q"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "dlrm-a5"
    assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
    assert builders.build_podgroup(s, REF, 5) is None, "Kueue forms the group from the pods: no PodGroup object"
    both = spec(replicas=2, scheduling={"queueName": "team-q", "gang": "coscheduling"})
    labels = builders.build_pod(both, REF, 0, 1)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/pod-group-name"] == labels["scheduling.x-k8s.io/pod-group"] == "dlrm-a1"
    assert "queue" not in builders.build_podgroup(both, REF, 1)["spec"], "a Kueue queue is no coscheduling field"


@pytest.mark.parametrize("scheduling, pod, message", [
    ({"scheduleTimeoutSeconds": 60}, {},
     "spec.scheduling.scheduleTimeoutSeconds: only used with spec.scheduling.gang coscheduling (gang is none"),
    ({"gang": "volcano", "scheduleTimeoutSeconds": 60}, {}, "spec.scheduling.scheduleTimeoutSeconds: only used with"),
    ({"gang": "coscheduling"}, {"labels": {"scheduling.x-k8s.io/pod-group": "mine"}},
     "spec.pod.labels: 'scheduling.x-k8s.io/pod-group' is set by the operator with spec.scheduling.gang coscheduling"),
    ({"gang": "volcano"}, {"annotations": {"scheduling.k8s.io/group-name": "mine"}},
     "spec.pod.annotations: 'scheduling.k8s.io/group-name' is set by the operator with spec.scheduling.gang volcano"),
])
def test_validation_names_the_field(scheduling, pod, message):
    errors = check_spec(spec(scheduling=scheduling, pod=pod), "dlrm")
    assert any(e.startswith(message) for e in errors), errors


def test_validation_accepts_gang_specs_and_hand_made_groups_without_gang():
    assert check_spec(spec(scheduling={"gang": "coscheduling", "scheduleTimeoutSeconds": 30}), "dlrm") == []
    # Before spec.scheduling.gang, a user could name a PodGroup they made themselves: still allowed.
    assert check_spec(spec(pod={"labels": {"scheduling.x-k8s.io/pod-group": "mine"},
                                "annotations": {"scheduling.k8s.io/group-name": "mine"}}), "dlrm") == []
    with pytest.raises(ValueError):
        spec(scheduling={"gang": "yunikorn"})
    with pytest.raises(ValueError):
        spec(scheduling={"gang": "coscheduling", "scheduleTimeoutSeconds": 0})


def test_read_state_and_condition():
    missing = podgroup.read_state(None)
    assert podgroup.condition(missing, "dlrm-a0")[:2] == (False, "PodGroupMissing")
    inqueue = podgroup.read_state({"status": {"phase": "Inqueue", "conditions": [
        {"type": "Unschedulable", "reason": "NotEnoughResources", "message": "2/4 tasks in gang unschedulable",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    value, reason, message = podgroup.condition(inqueue, "dlrm-a0")
    assert (value, reason) == (False, "Inqueue")
    assert "PodGroup dlrm-a0 is Inqueue" in message and "NotEnoughResources: 2/4 tasks in gang unschedulable" in message
    assert podgroup.condition(podgroup.read_state({"status": {}}), "g")[:2] == (False, "Pending")
    assert podgroup.condition(podgroup.read_state({"status": {"phase": "Scheduled"}}), "g")[:2] == (True, "Scheduled")
    assert podgroup.condition(podgroup.read_state({"status": {"phase": "Running"}}), "g")[:2] == (True, "Running")


def _obs(status, gang, pods=()):
    return lc.Observation(name="j", namespace="ns", uid="u", generation=1,
                          spec={"image": "img", "replicas": 2, "scheduling": {"gang": "volcano"}}, status=status,
                          pods=list(pods), now=T0, created=T0, gang=gang)


def test_lifecycle_reports_why_the_gang_waits():
    pending = [lc.PodView(name=f"j-{r}-a0", rank=r, attempt=0, phase="Pending") for r in range(2)]
    d = lc.decide(_obs({"phase": "Pending", "attempt": 0}, podgroup.GangState("Inqueue"), pending))
    cond = next(c for c in d.status["conditions"] if c["type"] == "GangScheduled")
    assert cond["status"] == "False" and cond["reason"] == "Inqueue" and "PodGroup j-a0 is Inqueue" in cond["message"]
    running = [replace(p, phase="Running") for p in pending]
    d = lc.decide(_obs({"phase": "Pending", "attempt": 0, "conditions": d.status["conditions"]},
                       podgroup.GangState("Inqueue"), running))
    cond = next(c for c in d.status["conditions"] if c["type"] == "GangScheduled")
    assert cond["status"] == "True" and cond["reason"] == "PodsRunning", "running ranks settle it, whatever the group says"
    # Not read (no gang, or a finished job): no condition.
    d = lc.decide(_obs({"phase": "Pending", "attempt": 0}, None, pending))
    assert not any(c["type"] == "GangScheduled" for c in (d.status or {}).get("conditions") or [])


def test_missing_api_message_names_the_field_and_the_crd():
    message = podgroup.missing_api_message(spec(scheduling={"gang": "coscheduling"}))
    assert message.startswith("spec.scheduling.gang: coscheduling needs the PodGroup API scheduling.x-k8s.io/v1alpha1")
    assert "podgroups.scheduling.x-k8s.io" in message
