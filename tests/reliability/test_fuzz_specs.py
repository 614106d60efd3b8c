"""Property-based RecTrainJob specs (hypothesis) against the real API server and the real operator.

Every spec is either rejected when applied, with a message naming the field, or accepted and then
ends with a clear status: the full gang (every rank pod of attempt 0, never some of them) with phase
Pending, Suspended with no pods, or Failed/InvalidSpec with a field-named message and no pods. The
operator never crashes.

Cost: most cases go through the API server's validation only (server-side dry run, cheap); a smaller
number through the live operator (each creates a job and waits for it to settle). The issue asks for
>= 500 cases; DRY_RUN_EXAMPLES + LIVE_EXAMPLES below are 500 + 40.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException
from rectrain_api import job as api
from rtj_harness import NO_SCHEDULER
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

DRY_RUN_EXAMPLES = 500
LIVE_EXAMPLES = 40
FIELD = re.compile(r"(spec\.[A-Za-z]|metadata\.name|\.metadata\.name|name:)")
# InvalidSpec from the operator names the RecTrainJob's field; one the Pod API refused quotes its field.
STATUS_FIELD = re.compile(r"(spec\.[A-Za-z]|metadata\.[a-z])")
_counter = itertools.count()
OUTCOMES: dict[str, int] = {}


def count(outcome: str) -> None:
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


GOOD_TOLERATION = [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}, {"operator": "Exists"}]
# path: (values that are fine, values only the operator or the pod API can refuse, values the schema refuses)
FIELDS: dict[str, tuple[list, list, list]] = {
    "imagePullPolicy": (["Always", "IfNotPresent", "Never"], [], ["Sometimes", 1]),
    "replicas": ([1, 2, 3], [], [0, -1, 1025, "two", 1.5]),
    "gpusPerReplica": ([0], [], [-1, 17]),
    "procsPerReplica": ([1, 2, 4], [], [0, -2, 257]),
    "masterPort": ([29500, 1, 65535], [], [0, 70000, "p"]),
    "resources.cpu": (["500m", "1", "1.5"], ["abc", "-1", "1e3x", "10x"], [5, True]),
    "resources.memory": (["1Gi", "512Mi", "0.5Ki"], ["1GB", "lots"], [5]),
    "resources.shmSize": (["1Gi"], ["big"], [[1]]),
    "trainer.model.embeddingDim": ([16], [], [0, 2048]),
    "trainer.model.bottomMlp": ([[32, 16], [16]], [[32, 8]], [[0], ["16"]]),
    "trainer.model.topMlp": ([[32, 16], []], [], [[-4]]),
    "trainer.training.precision": (["fp32", "bf16"], ["fp16"], ["fp8"]),
    "trainer.training.device": (["auto", "cpu"], ["cuda"], ["tpu"]),
    "trainer.training.backend": (["auto", "gloo"], ["nccl"], ["mpi"]),
    "trainer.training.batchSize": ([1, 512], [], [0, -1]),
    "trainer.data.source": (["synthetic", "criteo-tsv"], [], ["s3"]),
    "trainer.unknownSection": ([], [], [{"x": 1}]),
    "spot.enabled": ([True, False], [], ["yes"]),
    "spot.mode": (["required", "preferred"], [], ["always"]),
    "spot.provider": (["gke", "eks", "aks"], [], ["azure"]),
    "spot.generic": ([], [{"enabled": True, "provider": "generic"}], []),
    "spot.nodeLabels": ([{"pool": "spot"}], [{"bad key!": "x"}], [{"pool": 1}]),
    "spot.tolerations": ([GOOD_TOLERATION], [[{"key": "bad key!", "operator": "Exists"}]], [[{"operator": "In"}], [{"effect": "Never"}]]),
    "scheduling.nodeSelector": ([{"zone": "a"}], [{"bad key!": "a"}, {"cloud.google.com/gke-spot": "false"}], [{"zone": 1}]),
    "scheduling.tolerations": ([GOOD_TOLERATION], [], [[{"tolerationSeconds": "ten"}]]),
    "scheduling.queueName": (["team-a"], ["Bad Queue"], [7]),
    "scheduling.priorityClassName": (["system-cluster-critical"], ["no-such-class"], [7]),
    "runPolicy.backoffLimit": ([0, 1, 5], [], [-1, "x"]),
    "runPolicy.maxPreemptions": ([0, 3], [], [-1]),
    "runPolicy.activeDeadlineSeconds": ([600], [], [0, -3]),
    "runPolicy.ttlSecondsAfterFinished": ([0, 60], [], [-1]),
    "runPolicy.suspend": ([True, False], [], ["no"]),
    "nccl.debug": (["INFO", "WARN"], [], ["LOUD"]),
    "nccl.env": ([{"NCCL_ALGO": "Ring"}], [], [{"NCCL_ALGO": 1}]),
    "pod.env": ([[{"name": "EXTRA", "value": "1"}], [{"name": "MASTER_PORT", "value": "1"}]], [[{"name": "BAD NAME", "value": "1"}]],
                [[{"name": ""}], [{"value": "1"}]]),
    "pod.labels": ([{"team": "ml"}], [{"bad key!": "x"}, {"team": "has space"}, {"t": "v" * 70}], [{"team": 1}]),
    "pod.annotations": ([{"note": "x"}], [{"bad key!": "x"}], [{"note": 1}]),
    "pod.volumes": ([[{"name": "scratch", "emptyDir": {}}]], [[{"emptyDir": {}}], [{"name": "Bad_Name", "emptyDir": {}}]], ["not-a-list"]),
    "pod.volumeMounts": ([[{"name": "dshm", "mountPath": "/dev/shm2"}]], [[{"name": "missing", "mountPath": "/m"}], [{"name": "dshm", "mountPath": "relative"}]],
                         [[{"name": "", "mountPath": "/x"}], [{"name": "ckpt"}]]),
    "pod.serviceAccountName": (["default"], ["Not_A_Name"], [5]),
    "unknownField": ([], [], ["ignored?"]),
}
OPERATOR_FAULTS = sorted(k for k, (_, op, _) in FIELDS.items() if op)
ANY_FAULTS = sorted(k for k, (_, op, bad) in FIELDS.items() if op or bad)


@st.composite
def specs(draw, live: bool = False) -> dict:
    """A RecTrainJob spec: a random subset of fields with fine values, plus up to two faults (values
    the schema refuses only when not `live`, the dry-run cases; values only the operator or the pod
    API can refuse in both)."""
    faults = draw(st.sets(st.sampled_from(OPERATOR_FAULTS if live else ANY_FAULTS), max_size=2))
    spec: dict = {"image": "ghcr.io/rectrain/rectrain-trainer:test"}
    for path, (ok, op_bad, schema_bad) in FIELDS.items():
        if path in faults:
            value = draw(st.sampled_from(op_bad + ([] if live else schema_bad)))
        elif ok and draw(st.booleans()):
            value = draw(st.sampled_from(ok))
        else:
            continue
        if path == "spot.generic":
            spec["spot"] = {**spec.get("spot", {}), **value}
            continue
        node = spec
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if "spot.generic" in faults:
        spec["spot"] = {**spec["spot"], "enabled": True, "provider": "generic"}
        spec["spot"].pop("nodeLabels", None)
    elif spec.get("spot", {}).get("provider") == "generic":
        spec["spot"]["nodeLabels"] = {"pool": "spot"}
    if not live and "image" in faults:
        spec["image"] = ""
    if live:
        spec.setdefault("scheduling", {})["schedulerName"] = NO_SCHEDULER  # nothing may run these pods for real
        spec.setdefault("runPolicy", {}).setdefault("restartBackoff", {})["initialSeconds"] = 0
    return spec


names = st.one_of(
    st.builds(lambda n: f"f{n}", st.integers(0, 10**6)),
    st.sampled_from(["1starts-with-digit", "Upper", "with.dot", "x" * 58, "y" * 70, "under_score"]),
)


def body(name: str, spec: dict) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}


def assert_field_named_rejection(exc: ApiException, spec: dict) -> None:
    assert exc.status in (400, 422), f"rejected with {exc.status}, not as invalid: {exc.body[:800]}\nspec: {spec}"
    assert FIELD.search(exc.body), f"rejection names no field: {exc.body[:800]}\nspec: {spec}"


@settings(max_examples=DRY_RUN_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names, spec=specs())
def test_dry_run_rejects_bad_specs_naming_the_field(harness, name, spec):
    try:
        harness.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, body(name, spec), dry_run="All")
        count("dry-run accepted")
    except ApiException as exc:
        assert_field_named_rejection(exc, spec)
        count("dry-run rejected")


def settled(harness, name: str, replicas: int) -> dict | None:
    """The job's status once it is clear: Failed, Suspended, or Pending/Running with the whole gang."""
    st_ = harness.status(name)
    phase = st_.get("phase")
    if phase == "Failed" or phase == "Suspended":
        return st_
    if phase in ("Pending", "Running") and len(harness.pods(name, st_.get("attempt", 0))) == replicas:
        return st_
    if phase == "Pending" and not harness.pods(name) and any(e[:2] == ("Warning", "ChildError") for e in harness.events(name)):
        return {**st_, "phase": "Pending/ChildError"}  # e.g. a ServiceAccount that does not exist (yet): retried, and said so
    return None


@settings(max_examples=LIVE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs(live=True))
def test_live_operator_gives_every_accepted_spec_a_clear_status(harness, operator, spec):
    name = f"live{next(_counter)}"
    try:
        harness.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, body(name, spec))
    except ApiException as exc:
        assert_field_named_rejection(exc, spec)
        count("live rejected at apply")
        return
    try:
        replicas = harness.job(name)["spec"].get("replicas", 1)
        status = wait_for(lambda: settled(harness, name, replicas), timeout=30,
                          what=f"{name} to settle; status {harness.status(name)}; spec {spec}")
        pods = harness.pods(name)
        if status["phase"] == "Failed":
            failed = harness.condition(name, "Failed")
            assert failed and STATUS_FIELD.search(failed.get("message") or ""), (status, spec)
            assert failed["reason"] == "InvalidSpec", (status, spec)
            assert pods == [], f"an invalid job has pods: {[p.metadata.name for p in pods]}"
            assert any(e[0] == "Warning" and e[1] == "InvalidSpec" for e in harness.events(name)), harness.events(name)
        elif status["phase"] in ("Suspended", "Pending/ChildError"):
            assert pods == [], [p.metadata.name for p in pods]
        else:
            assert sorted(int(p.metadata.labels[api.LABEL_RANK]) for p in pods) == list(range(replicas)), (status, spec)
        assert operator.proc.poll() is None, "the operator died"
        count(f"live {status['phase']}" + (f"/{(harness.condition(name, 'Failed') or {}).get('reason')}" if status["phase"] == "Failed" else ""))
    finally:
        harness.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, name)



def test_fuzz_outcomes_cover_both_rejection_and_success():
    """Guards the generators: the cases above must not all fall on one side."""
    if not any(k.startswith("live") for k in OUTCOMES):
        pytest.skip("run with the fuzz tests above")
    print(f"fuzz outcomes: {OUTCOMES}")
    assert OUTCOMES.get("dry-run accepted", 0) >= 20 and OUTCOMES.get("dry-run rejected", 0) >= 100, OUTCOMES
    assert OUTCOMES.get("live Pending", 0) + OUTCOMES.get("live Suspended", 0) >= 5, OUTCOMES
    assert OUTCOMES.get("live Failed/InvalidSpec", 0) >= 5, OUTCOMES
