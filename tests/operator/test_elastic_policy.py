"""The elastic policy's decisions (operator/rectrain_operator/elastic.py), as tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rectrain_api import job as api
from rectrain_operator import builders, elastic
from rectrain_operator.elastic import Placement, ProbeView

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
PLACED, UNSCHEDULABLE, UNDECIDED = Placement(placed=True, since=NOW), Placement(unschedulable=True), Placement()


def spec(min_replicas: int | None = 1, max_replicas: int = 3) -> api.RecTrainJobSpec:
    body: dict = {"image": "x", "trainer": {"checkpoint": {"directory": "/c"}, "training": {"globalBatchSize": 96}}}
    if min_replicas is not None:
        body["elastic"] = {"minReplicas": min_replicas, "maxReplicas": max_replicas}
    return api.RecTrainJobSpec.model_validate(body)


SETTLED = NOW + timedelta(seconds=elastic.SETTLE_SECONDS)


@pytest.mark.parametrize("min_replicas,size,placements,want", [
    (1, 3, [PLACED, PLACED, UNSCHEDULABLE], 2),          # room for 2 of 3
    (1, 3, [PLACED, UNSCHEDULABLE, UNSCHEDULABLE], 1),
    (2, 3, [PLACED, PLACED, UNSCHEDULABLE], 2),
    (2, 3, [PLACED, UNSCHEDULABLE, UNSCHEDULABLE], None),  # fewer than minReplicas fit: wait for capacity
    (1, 3, [UNSCHEDULABLE] * 3, None),                   # none placed (an unbound volume, say): wait
    (1, 3, [PLACED, PLACED, PLACED], None),              # all fit
    (1, 3, [PLACED, UNSCHEDULABLE, UNDECIDED], None),    # the scheduler has not judged every pod
    (1, 3, [PLACED, UNSCHEDULABLE], None),               # a pod is missing (being created)
    (None, 3, [PLACED, PLACED, UNSCHEDULABLE], None),    # not elastic: a gang waits whole
])
def test_a_pending_gang_shrinks_to_what_the_scheduler_placed(min_replicas, size, placements, want):
    s = spec(min_replicas) if min_replicas is not None else api.RecTrainJobSpec(image="x", replicas=3)
    assert elastic.shrunk_size(s, size, placements, SETTLED) == (want, None)


def test_a_shrink_waits_for_fresh_placements_to_settle():
    """A pod placed a moment ago means room changed; the others' Unschedulable may be stale."""
    size, again = elastic.shrunk_size(spec(), 3, [PLACED, PLACED, UNSCHEDULABLE], NOW + timedelta(seconds=1))
    assert size is None and again == pytest.approx(elastic.SETTLE_SECONDS - 1)


def probe(index: int, placement: Placement, deleting: bool = False) -> ProbeView:
    return ProbeView(f"j-probe-{index}", index, deleting, placement)


def test_probes_fill_the_gap_to_max_replicas():
    assert elastic.probes_missing(spec(), 1, []) == [0, 1]
    assert elastic.probes_missing(spec(), 1, [probe(1, UNDECIDED)]) == [0]
    assert elastic.probes_missing(spec(), 3, []) == []
    assert elastic.probes_missing(api.RecTrainJobSpec(image="x", replicas=3), 1, []) == []


def test_a_gang_grows_by_the_probes_placed_once_placements_settle():
    s = spec()
    assert elastic.grown_size(s, 1, [probe(0, UNSCHEDULABLE), probe(1, UNSCHEDULABLE)], NOW) == (None, None)
    # Every probe placed: grow at once.
    assert elastic.grown_size(s, 1, [probe(0, PLACED), probe(1, PLACED)], NOW) == (3, None)
    # One placed just now, the other still judged unschedulable: give it time to be placed too.
    size, again = elastic.grown_size(s, 1, [probe(0, PLACED), probe(1, UNSCHEDULABLE)], NOW)
    assert size is None and 0 < again <= elastic.SETTLE_SECONDS
    later = NOW + timedelta(seconds=elastic.SETTLE_SECONDS + 1)
    assert elastic.grown_size(s, 1, [probe(0, PLACED), probe(1, UNSCHEDULABLE)], later) == (2, None)
    # A probe the scheduler has not judged yet is waited for, however long.
    assert elastic.grown_size(s, 1, [probe(0, PLACED), probe(1, UNDECIDED)], later)[0] is None
    # Probes being deleted count for nothing.
    assert elastic.grown_size(s, 1, [probe(0, PLACED, deleting=True)], later) == (None, None)


def test_probe_views_and_placements_come_from_pod_manifests():
    pod = builders.build_probe(spec(), builders.JobRef("j", "ns", "uid"), 1)
    assert elastic.probe_view(pod) == ProbeView("j-probe-1", 1, False, Placement())
    pod["spec"]["nodeName"] = "node-a"
    pod["status"] = {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-30T12:00:00Z"}]}
    assert elastic.probe_view(pod).placement == Placement(placed=True, since=NOW)
    waiting = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    assert elastic.placement(waiting) == Placement(unschedulable=True)
    rank_pod = builders.build_pod(spec(), builders.JobRef("j", "ns", "uid"), 0, 0)
    assert elastic.probe_view(rank_pod) is None


def test_a_probe_holds_one_ranks_room_and_runs_nothing():
    s = api.RecTrainJobSpec.model_validate({
        "image": "img", "gpusPerReplica": 2, "resources": {"cpu": "4", "memory": "8Gi"},
        "scheduling": {"priorityClassName": "high", "nodeSelector": {"pool": "a"}},
        "elastic": {"minReplicas": 1, "maxReplicas": 2},
        "trainer": {"checkpoint": {"directory": "/c"}, "training": {"globalBatchSize": 96}},
    })
    ref = builders.JobRef("j", "ns", "uid")
    probe_pod, rank_pod = builders.build_probe(s, ref, 0), builders.build_pod(s, ref, 0, 0)
    container, rank_container = probe_pod["spec"]["containers"][0], rank_pod["spec"]["containers"][0]
    assert container["resources"] == rank_container["resources"]
    for key in ("tolerations", "nodeSelector", "priorityClassName"):
        assert probe_pod["spec"][key] == rank_pod["spec"][key]
    assert container["command"] == ["sleep", "infinity"] and probe_pod["spec"]["automountServiceAccountToken"] is False
    assert api.LABEL_RANK not in probe_pod["metadata"]["labels"], "a probe is never taken for a rank"
    assert probe_pod["metadata"]["labels"][api.LABEL_JOB_NAME] == "j"
    assert probe_pod["metadata"]["ownerReferences"][0]["uid"] == "uid"


def test_elastic_rank_pods_carry_the_world_size_of_their_gang():
    s = spec()
    pods = builders.build_pods(s, builders.JobRef("j", "ns", "uid"), attempt=2, size=2)
    assert len(pods) == 2
    env = {e["name"]: e["value"] for e in pods[1]["spec"]["containers"][0]["env"]}
    assert (env["WORLD_SIZE"], env["PET_NNODES"], env["RANK"]) == ("2", "2", "1")
    assert builders.build_pods(s, builders.JobRef("j", "ns", "uid"), attempt=0)[0]["spec"]["containers"][0]["env"][2] == \
        {"name": "WORLD_SIZE", "value": "3"}, "without a size, the size the job aims for"


# ------------------------------------------------------------------ the lifecycle with spec.elastic

from rectrain_operator import lifecycle as lc  # noqa: E402
from rectrain_operator.job_actions import CreatePods, CreateProbes, DeletePods  # noqa: E402

ELASTIC_SPEC = {"image": "img", "elastic": {"minReplicas": 1, "maxReplicas": 3},
                "trainer": {"checkpoint": {"directory": "/c"}, "training": {"globalBatchSize": 96}},
                "runPolicy": {"restartBackoff": {"initialSeconds": 0, "maxSeconds": 0}}}


def observe(status: dict, pods=(), probes=(), now=NOW) -> lc.Observation:
    return lc.Observation(name="j", namespace="ns", uid="u", generation=1, spec=ELASTIC_SPEC, status=status,
                          pods=list(pods), probes=list(probes), now=now, created=NOW)


def rank(r: int, attempt: int, phase: str = "Pending", where: Placement = PLACED, **kw) -> lc.PodView:
    return lc.PodView(name=f"j-{r}-a{attempt}", rank=r, attempt=attempt, phase=phase, placement=where, **kw)


def apply(o: lc.Observation) -> tuple[lc.Decision, dict]:
    d = lc.decide(o)
    status = {**o.status, **(d.status or {})}
    return d, {k: v for k, v in status.items() if v is not None}


def test_elastic_job_shrinks_grows_and_never_counts_a_resize_as_a_failure():
    # New: the gang starts at maxReplicas.
    d, st = apply(observe({}))
    assert CreatePods(0, (0, 1, 2), 3) in d.actions and (st["replicas"], st["desiredReplicas"], st["resizes"]) == (3, 3, 0)

    # Room for two: the third rank pod is unschedulable -> restart at 2, at once, counted as a resize.
    no_room = Placement(unschedulable=True, message="0/1 nodes are available: 1 Insufficient cpu.")
    pods = [rank(0, 0), rank(1, 0), rank(2, 0, where=no_room)]
    d, st = apply(observe(st, pods, now=SETTLED))
    assert (st["phase"], st["replicas"], st["resizes"], st["restarts"], st["failures"]) == ("Restarting", 2, 1, 0, 0)
    assert DeletePods(("j-0-a0", "j-1-a0", "j-2-a0")) in d.actions
    resized = next(c for c in st["conditions"] if c["type"] == "Resized")
    assert resized["reason"] == "ScaledDown" and "Insufficient cpu" in resized["message"]
    assert [a.reason for a in d.actions if isinstance(a, lc.Event)] == ["Resized"]

    # Once the old gang is gone: attempt 1 with 2 ranks, world size 2 x procs.
    d, st = apply(observe(st, now=SETTLED))
    assert st["phase"] == "Pending" and st["attempt"] == 1 and CreatePods(1, (0, 1), 2) in d.actions

    # Running at 2 of 3: one probe holds the room of the missing rank.
    running = [rank(0, 1, "Running"), rank(1, 1, "Running")]
    d, st = apply(observe(st, running, now=SETTLED))
    assert st["phase"] == "Running" and CreateProbes((0,)) in d.actions and st["ready"] == "2/2"

    # The probe is placed: grow to 3 (the ranks and the probe go first).
    placed_probe = ProbeView("j-probe-0", 0, False, Placement(placed=True, since=NOW))
    d, st = apply(observe(st, running, [placed_probe], now=SETTLED))
    assert (st["phase"], st["replicas"], st["resizes"]) == ("Restarting", 3, 2)
    assert DeletePods(("j-0-a1", "j-1-a1", "j-probe-0")) in d.actions
    assert next(c for c in st["conditions"] if c["type"] == "Resized")["reason"] == "ScaledUp"

    # The new attempt waits for the probe to be gone (its room is the new rank's), then takes 3.
    deleting_probe = ProbeView("j-probe-0", 0, True, Placement(placed=True, since=NOW))
    d, st = apply(observe(st, probes=[deleting_probe], now=SETTLED))
    assert st["phase"] == "Restarting" and not any(isinstance(a, CreatePods) for a in d.actions)
    d, st = apply(observe(st, now=SETTLED))
    assert CreatePods(2, (0, 1, 2), 3) in d.actions
    assert (st["restarts"], st["failures"], st["preemptions"]) == (0, 0, 0)


def test_elastic_job_keeps_waiting_at_min_replicas_and_drops_probes_when_not_running():
    at_min = {"phase": "Pending", "attempt": 4, "replicas": 1, "resizes": 2}
    d, st = apply(observe(at_min, [rank(0, 4, where=Placement(unschedulable=True))], now=SETTLED))
    assert st["phase"] == "Pending" and st["replicas"] == 1 and st["resizes"] == 2
    # A probe left over while the gang is not running is deleted.
    stray = ProbeView("j-probe-0", 0, False, Placement())
    d, _ = apply(observe(at_min, [rank(0, 4)], [stray]))
    assert DeletePods(("j-probe-0",)) in d.actions


def test_a_preempted_elastic_gang_restarts_at_its_size_and_counts_a_preemption():
    running = {"phase": "Running", "attempt": 1, "replicas": 2, "resizes": 1}
    pods = [rank(0, 1, "Running"), rank(1, 1, "Failed", exit_code=143)]
    probe_0 = ProbeView("j-probe-0", 0, False, Placement(unschedulable=True))
    d, st = apply(observe(running, pods, [probe_0]))
    assert (st["phase"], st["replicas"], st["preemptions"], st["resizes"]) == ("Restarting", 2, 1, 1)
    assert DeletePods(("j-probe-0",)) in d.actions, "probes go with the gang"
