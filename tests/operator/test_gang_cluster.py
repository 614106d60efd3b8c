"""Gang scheduling against the real API server: the operator's PodGroups (Volcano and coscheduling),
their owner references, the pods' gang labels and annotations, clean-up, the GangScheduled condition
and the job's failure when the cluster lacks the PodGroup CRD.

The PodGroup CRDs are the ones vendored in tests/fixtures/crds (written from the projects' API types).
No Volcano or coscheduling scheduler runs here: the rank pods stay Pending and unbound under the
schedulerNames volcano and scheduler-plugins-scheduler. The harness plays the kubelet (pod status
patches) and, where said, the gang scheduler (PodGroup status patches)."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gang_support import install_crd_file
from rectrain_api import job as api
from support import wait_for

pytestmark = pytest.mark.cluster

VOLCANO = ("scheduling.volcano.sh", "v1beta1", "podgroups")
COSCHEDULING = ("scheduling.x-k8s.io", "v1alpha1", "podgroups")


def install(k8s_api, file: str) -> None:
    install_crd_file(k8s_api, file)


def uninstall(k8s_api, name: str, group: str, version: str, plural: str) -> None:
    """Delete a CRD if present and wait until its API is gone."""
    ext = client.ApiextensionsV1Api(k8s_api)
    try:
        ext.delete_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    custom = client.CustomObjectsApi(k8s_api)

    def gone() -> bool:
        try:
            custom.list_cluster_custom_object(group, version, plural)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=30, what=f"{name} gone")


def create_gang_job(harness, name: str, **spec):
    """A job whose pods keep the gang scheduler's name (the harness's no-scheduler default removed)."""
    body = harness.job_body(name, **spec)
    body["spec"]["scheduling"].pop("schedulerName")
    return harness.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, body)


def podgroup(harness, gvp, name):
    try:
        return harness.custom.get_namespaced_custom_object(gvp[0], gvp[1], harness.ns, gvp[2], name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def podgroup_names(harness, gvp, job):
    items = harness.custom.list_namespaced_custom_object(gvp[0], gvp[1], harness.ns, gvp[2],
                                                         label_selector=f"{api.LABEL_JOB_NAME}={job}")["items"]
    return sorted(g["metadata"]["name"] for g in items)


def test_missing_podgroup_crd_fails_the_job_before_any_pod(harness, operator, k8s_api):
    """gang volcano on a cluster without Volcano's PodGroup CRD: Failed with a message naming the field
    and the CRD, a Warning Event, and no rank pod at all (no half gang)."""
    uninstall(k8s_api, "podgroups.scheduling.volcano.sh", *VOLCANO)
    create_gang_job(harness, "nocrd", replicas=2, scheduling={"gang": "volcano"})
    st = harness.wait_phase("nocrd", "Failed")
    failed = harness.condition("nocrd", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.scheduling.gang: volcano needs the PodGroup API scheduling.volcano.sh/v1beta1")
    assert "podgroups.scheduling.volcano.sh" in failed["message"], st
    assert harness.pods("nocrd") == []
    wait_for(lambda: any(r == "InvalidSpec" and "podgroups.scheduling.volcano.sh" in m for _, r, m in harness.events("nocrd")),
             what="an InvalidSpec event naming the CRD")


def test_volcano_podgroup_per_attempt_condition_and_cleanup(harness, operator, k8s_api):
    """A 2-rank gang under Volcano: the PodGroup of each attempt (owned by the job, minMember, summed
    minResources, queue), the pods' group annotation and schedulerName, the GangScheduled condition
    from the group's phase (the test plays Volcano), the old attempt's group deleted on restart, and
    the rest deleted by ttlSecondsAfterFinished. No Volcano runs: the pods stay Pending and unbound."""
    install(k8s_api, "volcano-podgroups.yaml")
    job = create_gang_job(harness, "vc", replicas=2, resources={"cpu": "500m", "memory": "1Gi"},
                          scheduling={"gang": "volcano", "queueName": "research"},
                          runPolicy={"backoffLimit": 1, "ttlSecondsAfterFinished": 1, "restartBackoff": {"initialSeconds": 0}})
    pods = harness.wait_pods("vc", 2, attempt=0)
    group = wait_for(lambda: podgroup(harness, VOLCANO, "vc-a0"), what="PodGroup vc-a0")
    owner = group["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (api.KIND, "vc", job["metadata"]["uid"], True)
    assert group["spec"] == {"minMember": 2, "queue": "research", "minResources": {"cpu": "1", "memory": str(2 * 2**30)}}
    for pod in pods:
        assert pod.metadata.annotations["scheduling.k8s.io/group-name"] == "vc-a0"
        assert pod.spec.scheduler_name == "volcano"
        assert not any(k.startswith("kueue.x-k8s.io/") for k in pod.metadata.labels), "the queue is Volcano's"
        assert pod.status.phase == "Pending" and pod.spec.node_name is None, "no Volcano scheduler runs here"

    # Playing Volcano: the group is admitted to its queue but does not fit yet.
    harness.custom.patch_namespaced_custom_object(*VOLCANO[:2], harness.ns, VOLCANO[2], "vc-a0", {"status": {
        "phase": "Inqueue", "conditions": [{"type": "Unschedulable", "status": "True", "reason": "NotEnoughResources",
                                            "message": "2/2 tasks in gang unschedulable", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
    )
    harness.patch_spec("vc", {"trainer": {"training": {"seed": 7}}})  # any change: the operator looks again now
    cond = wait_for(lambda: (lambda c: c if c and c["reason"] == "Inqueue" else None)(harness.condition("vc", "GangScheduled")),
                    what="GangScheduled Inqueue")
    assert cond["status"] == "False" and "NotEnoughResources: 2/2 tasks in gang unschedulable" in cond["message"]

    harness.run_all("vc", 0)
    harness.wait_phase("vc", "Running")
    assert harness.condition("vc", "GangScheduled")["status"] == "True"
    harness.exit("vc-1-a0", 1)  # a failure: the gang restarts as attempt 1 with its own PodGroup
    harness.wait_pods("vc", 2, attempt=1)
    wait_for(lambda: podgroup_names(harness, VOLCANO, "vc") == ["vc-a1"], what="only the PodGroup of attempt 1")
    for p in harness.pods("vc", 1):
        harness.exit(p.metadata.name, 0)
    harness.wait_phase("vc", "Succeeded")
    wait_for(lambda: podgroup_names(harness, VOLCANO, "vc") == [], what="ttlSecondsAfterFinished to delete the PodGroup")


def test_coscheduling_podgroup_and_garbage_collection(harness, operator, k8s_api):
    """A 3-rank gang under the coscheduling plugin: the PodGroup (minMember, minResources,
    scheduleTimeoutSeconds), the pods' pod-group label and the plugin's scheduler name; deleting the job
    deletes the PodGroup (ownerReference). No coscheduling scheduler runs: the pods stay Pending and unbound."""
    install(k8s_api, "coscheduling-podgroups.yaml")
    job = create_gang_job(harness, "cs", replicas=3, resources={"cpu": "250m"},
                          scheduling={"gang": "coscheduling", "scheduleTimeoutSeconds": 90})
    pods = harness.wait_pods("cs", 3, attempt=0)
    group = wait_for(lambda: podgroup(harness, COSCHEDULING, "cs-a0"), what="PodGroup cs-a0")
    assert group["spec"] == {"minMember": 3, "minResources": {"cpu": "750m"}, "scheduleTimeoutSeconds": 90}
    assert group["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    for pod in pods:
        assert pod.metadata.labels["scheduling.x-k8s.io/pod-group"] == "cs-a0"
        assert pod.spec.scheduler_name == "scheduler-plugins-scheduler"
        assert pod.status.phase == "Pending" and pod.spec.node_name is None, "no coscheduling scheduler runs here"
    cond = wait_for(lambda: harness.condition("cs", "GangScheduled"), what="GangScheduled condition")
    assert cond["status"] == "False" and cond["reason"] == "Pending", cond
    harness.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, "cs")
    wait_for(lambda: podgroup(harness, COSCHEDULING, "cs-a0") is None, timeout=60, what="PodGroup garbage-collected")
