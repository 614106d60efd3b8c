"""The lifecycle state machine, table-tested with plain values (no cluster)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rectrain_operator import lifecycle as lc
from rectrain_operator.failure_classification import backoff_seconds, classify
from rectrain_operator.job_actions import CreatePods, DeleteChildren, DeletePods, EnsureChildren

from lifecycle_support import T0, cond, obs, pod, step


def kinds(d):
    return [type(a).__name__ for a in d.actions]


def test_new_job_creates_children_and_pods():
    d, st = step(obs())
    assert st["phase"] == "Pending" and st["attempt"] == 0 and st["ready"] == "0/2"
    assert d.actions[:2] == [EnsureChildren(), CreatePods(0, (0, 1), 2)]
    assert cond(st, "Created")["status"] == "True" and d.created


def test_pending_recreates_missing_and_running_when_all_run():
    _, st = step(obs())
    d, st2 = step(obs(st, [pod(0)]))
    assert st2["phase"] == "Pending" and CreatePods(0, (1,), 2) in d.actions
    d, st3 = step(obs(st2, [pod(0), pod(1)], now=T0 + timedelta(seconds=3)))
    assert st3["phase"] == "Running" and st3["ready"] == "2/2"
    assert cond(st3, "Running")["reason"] == "AllRanksRunning"
    assert d.time_to_running == 3.0 and st3["firstRunningTime"]
    d, _ = step(obs(st3, [pod(0), pod(1)]))
    assert d.status is None and d.actions == []  # steady state writes nothing


def test_gang_that_ran_and_finished_between_looks_gets_first_running_time_from_the_pods():
    _, st = step(obs())
    started = [T0 + timedelta(seconds=4), T0 + timedelta(seconds=6)]
    done = [pod(r, "Succeeded", started_at=started[r]) for r in (0, 1)]
    d, st2 = step(obs(st, done, now=T0 + timedelta(seconds=20)))
    assert st2["phase"] == "Succeeded"
    assert st2["firstRunningTime"] == lc.fmt_time(started[1]) and d.time_to_running == 6.0
    assert lc.parse_time(st2["startTime"]) <= lc.parse_time(st2["firstRunningTime"]) <= lc.parse_time(st2["completionTime"])


def test_first_running_time_is_clamped_to_the_job_and_kept_once_set():
    _, st = step(obs())
    skewed = [pod(r, "Succeeded", started_at=T0 - timedelta(hours=1)) for r in (0, 1)]  # a node's clock behind
    d, st2 = step(obs(st, skewed, now=T0 + timedelta(seconds=5)))
    assert st2["firstRunningTime"] == st2["startTime"] and d.time_to_running == 0.0
    st_run = running()
    d, st3 = step(obs(st_run, [pod(r, "Succeeded", started_at=T0 + timedelta(minutes=5)) for r in (0, 1)],
                      now=T0 + timedelta(minutes=9)))
    assert st3["firstRunningTime"] == st_run["firstRunningTime"] and d.time_to_running is None


def test_pod_view_reads_the_trainer_start_time():
    manifest = {"metadata": {"name": "j-0-a0", "labels": {lc.api.LABEL_RANK: "0", lc.api.LABEL_ATTEMPT: "0"}},
                "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                    "exitCode": 0, "startedAt": "2026-01-01T00:00:07Z", "finishedAt": "2026-01-01T00:00:09Z"}}}]}}
    assert lc.pod_view(manifest).started_at == T0 + timedelta(seconds=7)
    manifest["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert lc.pod_view(manifest).started_at is None


def running(**spec):
    _, st = step(obs(**spec))
    _, st = step(obs(st, [pod(0), pod(1)], **spec))
    assert st["phase"] == "Running"
    return st


@pytest.mark.parametrize(
    "bad,cause,reason",
    [
        (dict(phase="Failed", exit_code=1, container_reason="Error"), "failure", "Error"),
        (dict(phase="Failed", exit_code=137, container_reason="OOMKilled"), "failure", "OOMKilled"),
        # 143 is a preemption off spot too (the exit-code contract, rectrain_api.exit_codes).
        (dict(phase="Failed", exit_code=143, container_reason="Error"), "preemption", "Terminated"),
        (dict(phase="Failed", reason="Evicted", message="node low on memory"), "preemption", "Evicted"),
        (dict(phase="Failed", exit_code=137, disruption="PreemptionByScheduler"), "preemption", "PreemptionByScheduler"),
        (dict(phase="Failed", reason="Shutdown"), "preemption", "Shutdown"),
        (dict(phase="Unknown"), "preemption", "NodeLost"),
        (dict(phase="Running", deleting=True), "preemption", "PodDeleted"),
        (dict(phase="Failed"), "failure", "PodFailed"),
    ],
)
def test_classification(bad, cause, reason):
    f = classify(pod(1, **bad), spot=False)
    assert (f.cause, f.reason) == (cause, reason)


def test_signal_exit_on_spot_is_preemption():
    assert classify(pod(0, phase="Failed", exit_code=143), spot=True).cause == "preemption"
    assert classify(pod(0, phase="Failed", exit_code=2), spot=True).cause == "failure"
    assert classify(pod(0, phase="Succeeded", exit_code=0), spot=True) is None


# The exit-code contract (rectrain_api.exit_codes), as the lifecycle applies it to a failed rank pod.
@pytest.mark.parametrize(
    "code,spot,cause,reason,retryable",
    [
        (1, False, "failure", "Error", True),
        (1, True, "failure", "Error", True),
        (2, False, "failure", "InvalidConfiguration", False),  # no retry can fix a configuration
        (2, True, "failure", "InvalidConfiguration", False),
        (143, False, "preemption", "Terminated", True),  # SIGTERM: checkpointed, "resume me", anywhere
        (143, True, "preemption", "SpotReclaimed", True),
        (137, False, "failure", "Error", True),  # other signals: a crash off spot ...
        (137, True, "preemption", "SpotReclaimed", True),  # ... a reclaim on spot
        (139, False, "failure", "Error", True),
        (139, True, "preemption", "SpotReclaimed", True),
        (128, True, "failure", "Error", True),  # 128 + 0 is no signal
        (255, True, "failure", "Error", True),  # exit(-1), not signal 127
        (0, True, "failure", "Error", True),  # exited 0 in a pod that failed anyway
    ],
)
def test_exit_code_contract(code, spot, cause, reason, retryable):
    f = classify(pod(1, phase="Failed", exit_code=code, container_reason="Error"), spot=spot)
    assert (f.cause, f.reason, f.retryable, f.exit_code) == (cause, reason, retryable, code)


@pytest.mark.parametrize("code", [2, 143, 137])
def test_pod_state_decides_before_the_exit_code(code):
    # A pod evicted, disrupted or deleted is a preemption whatever its code; OOMKilled is a failure even on spot.
    assert classify(pod(1, phase="Failed", exit_code=code, reason="Evicted"), spot=False).cause == "preemption"
    assert classify(pod(1, phase="Failed", exit_code=code, disruption="EvictionByEvictionAPI"), spot=False).cause == "preemption"
    assert classify(pod(1, phase="Failed", exit_code=code, deleting=True), spot=False).reason == "PodDeleted"
    oom = classify(pod(1, phase="Failed", exit_code=137, container_reason="OOMKilled"), spot=True)
    assert (oom.cause, oom.reason) == ("failure", "OOMKilled")


def test_invalid_configuration_fails_the_job_at_once():
    spec = dict(runPolicy={"backoffLimit": 5})  # irrelevant: no retry can fix a configuration
    st = running(**spec)
    bad = pod(1, phase="Failed", exit_code=2, message="rectrain-train: training.batchSize: must be > 0")
    d, st = step(obs(st, [pod(0), bad], now=T0 + timedelta(seconds=5), **spec))
    assert st["phase"] == "Failed" and "CreatePods" not in kinds(d)
    failed = cond(st, "Failed")
    assert failed["reason"] == "InvalidConfiguration"
    assert "rank 1" in failed["message"] and "training.batchSize: must be > 0" in failed["message"]
    assert (st["failures"], st["restarts"], st["preemptions"]) == (1, 0, 0)
    assert st["lastFailure"] == {"cause": "failure", "rank": 1, "reason": "InvalidConfiguration", "exitCode": 2,
                                 "message": failed["message"], "time": lc.fmt_time(T0 + timedelta(seconds=5))}
    assert cond(st, "Running")["status"] == "False" and "restartAfter" not in st
    assert DeletePods(("j-0-a0",)) in d.actions  # the rank still running goes; no gang restart
    assert lc.Event("Warning", "InvalidConfiguration", failed["message"]) in d.actions
    assert d.finished == "failed" and d.restart_cause is None
    d, _ = step(obs(st, [pod(0, deleting=True), bad], now=T0 + timedelta(seconds=9), **spec))
    assert d.status is None and d.actions == []  # terminal: nothing more to do


def test_invalid_configuration_wins_over_a_simultaneous_preemption():
    st = running()
    d, st = step(obs(st, [pod(0, phase="Failed", reason="Evicted"), pod(1, phase="Failed", exit_code=2)]))
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "InvalidConfiguration"
    assert (st["failures"], st["preemptions"]) == (1, 0)


def test_sigterm_exit_off_spot_is_a_preemption_not_a_failure():
    spec = dict(runPolicy={"backoffLimit": 0, "restartBackoff": {"initialSeconds": 0}})
    st = running(**spec)
    d, st = step(obs(st, [pod(0), pod(1, phase="Failed", exit_code=143, message="stopped by SIGTERM at step 40")], **spec))
    assert st["phase"] == "Restarting"  # backoffLimit 0 would have failed the job on a failure
    assert (st["preemptions"], st["failures"], st["restarts"]) == (1, 0, 1)
    assert st["lastFailure"]["cause"] == "preemption" and st["lastFailure"]["exitCode"] == 143
    assert "step 40" in st["lastFailure"]["message"]
    assert d.restart_cause == "preemption" and cond(st, "Restarting")["reason"] == "Preempted"
    assert DeletePods(("j-0-a0",)) in d.actions  # the rank that ended by itself is kept for its log


def test_sigterm_exits_are_bounded_by_max_preemptions():
    spec = dict(runPolicy={"maxPreemptions": 0})
    st = running(**spec)
    _, st = step(obs(st, [pod(0), pod(1, phase="Failed", exit_code=143)], **spec))
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "PreemptionLimitExceeded"


def test_app_failure_restarts_gang_after_backoff_then_backoff_limit():
    spec = dict(runPolicy={"backoffLimit": 1, "restartBackoff": {"initialSeconds": 10, "maxSeconds": 15}})
    st = running(**spec)
    d, st = step(obs(st, [pod(0), pod(1, phase="Failed", exit_code=3)], **spec))
    assert st["phase"] == "Restarting" and st["failures"] == 1 and st["restarts"] == 1 and st["preemptions"] == 0
    assert st["lastFailure"]["cause"] == "failure" and st["lastFailure"]["exitCode"] == 3
    assert DeletePods(("j-0-a0",)) in d.actions and d.restart_cause == "failure"
    assert cond(st, "Restarting")["reason"] == "ApplicationFailed" and cond(st, "Running")["status"] == "False"
    assert st["restartAfter"] == lc.fmt_time(T0 + timedelta(seconds=10)) and d.requeue_after == pytest.approx(10.05)
    # Old pods still there: keep deleting, no new pods.
    d, st = step(obs(st, [pod(0, deleting=True)], now=T0 + timedelta(seconds=20), **spec))
    assert "CreatePods" not in kinds(d)
    # Gone but backoff not over.
    d, st = step(obs(st, [], now=T0 + timedelta(seconds=5), **spec))
    assert "CreatePods" not in kinds(d) and st["phase"] == "Restarting"
    d, st = step(obs(st, [], now=T0 + timedelta(seconds=11), **spec))
    assert st["phase"] == "Pending" and st["attempt"] == 1 and CreatePods(1, (0, 1), 2) in d.actions
    _, st = step(obs(st, [pod(0, attempt=1), pod(1, attempt=1)], **spec))
    assert st["phase"] == "Running" and cond(st, "Restarting")["status"] == "False"
    d, st = step(obs(st, [pod(0, attempt=1, phase="Failed", exit_code=1), pod(1, attempt=1)], **spec))
    assert st["phase"] == "Failed" and st["failures"] == 2
    assert cond(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert DeletePods(("j-1-a1",)) in d.actions and d.finished == "failed"


def test_backoff_grows_and_caps():
    from rectrain_api.job import RunPolicy
    p = RunPolicy(restartBackoff={"initialSeconds": 2, "maxSeconds": 5})
    assert [backoff_seconds(p, n) for n in range(4)] == [2, 4, 5, 5]


def test_preemptions_do_not_consume_backoff_limit():
    spec = dict(runPolicy={"backoffLimit": 0, "maxPreemptions": 3, "restartBackoff": {"initialSeconds": 0}})
    st = running(**spec)
    for n in range(1, 4):
        attempt = st["attempt"]
        victims = [pod(0, attempt=attempt, phase="Failed", reason="Evicted"), pod(1, attempt=attempt, phase="Failed", exit_code=1)]
        d, st = step(obs(st, victims, **spec))
        assert st["phase"] == "Restarting" and st["preemptions"] == n and st["failures"] == 0, st
        assert d.restart_cause == "preemption" and cond(st, "Restarting")["reason"] == "Preempted"
        _, st = step(obs(st, [], **spec))
        _, st = step(obs(st, [pod(0, attempt=n), pod(1, attempt=n)], **spec))
        assert st["phase"] == "Running"
    # A fourth exceeds maxPreemptions.
    _, st = step(obs(st, [pod(0, attempt=3), pod(1, attempt=3, phase="Unknown")], **spec))
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "PreemptionLimitExceeded"


def test_missing_pod_while_running_is_a_preemption():
    st = running()
    d, st = step(obs(st, [pod(0)]))
    assert st["phase"] == "Restarting" and st["preemptions"] == 1
    assert st["lastFailure"]["reason"] == "PodDeleted" and st["lastFailure"]["rank"] == 1


def test_success():
    st = running(runPolicy={"ttlSecondsAfterFinished": 60})
    d, st = step(obs(st, [pod(0, phase="Succeeded"), pod(1)], runPolicy={"ttlSecondsAfterFinished": 60}))
    assert st["phase"] == "Running"  # one rank done, one still running
    d, st = step(obs(st, [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")], runPolicy={"ttlSecondsAfterFinished": 60}))
    assert st["phase"] == "Succeeded" and cond(st, "Succeeded")["status"] == "True" and d.finished == "succeeded"
    assert st["completionTime"] and d.requeue_after == pytest.approx(60.05)


def test_ttl_deletes_children_once():
    spec = dict(runPolicy={"ttlSecondsAfterFinished": 30})
    st = running(**spec)
    done = [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")]
    _, st = step(obs(st, done, **spec))
    d, st = step(obs(st, done, now=T0 + timedelta(seconds=10), **spec))
    assert "DeleteChildren" not in kinds(d) and d.requeue_after == pytest.approx(20.05)
    d, st = step(obs(st, done, now=T0 + timedelta(seconds=31), **spec))
    assert DeleteChildren() in d.actions and st["childrenDeletedTime"] and st["phase"] == "Succeeded"
    d, _ = step(obs(st, [], now=T0 + timedelta(seconds=40), **spec))
    assert d.actions == [] and d.status is None


def test_suspend_and_resume():
    st = running()
    d, st = step(obs(st, [pod(0), pod(1)], runPolicy={"suspend": True}))
    assert st["phase"] == "Suspended" and DeletePods(("j-0-a0", "j-1-a0")) in d.actions
    assert cond(st, "Suspended")["status"] == "True" and d.restart_cause is None
    assert st["restarts"] == 0 and st["preemptions"] == 0
    d, st = step(obs(st, [], runPolicy={"suspend": True}))
    assert d.status is None and d.actions == []
    d, st = step(obs(st, [], now=T0 + timedelta(seconds=100)))
    assert st["phase"] == "Pending" and st["attempt"] == 1 and CreatePods(1, (0, 1), 2) in d.actions
    assert cond(st, "Suspended")["status"] == "False" and st["startTime"] == lc.fmt_time(T0 + timedelta(seconds=100))


def test_created_suspended():
    d, st = step(obs(runPolicy={"suspend": True}))
    assert st["phase"] == "Suspended" and "CreatePods" not in kinds(d)
    d, st = step(obs(st))
    assert st["phase"] == "Pending" and CreatePods(1, (0, 1), 2) in d.actions


def test_deadline():
    spec = dict(runPolicy={"activeDeadlineSeconds": 60})
    d, st = step(obs(**spec))
    assert d.requeue_after == pytest.approx(60.05)
    _, st = step(obs(st, [pod(0), pod(1)], **spec))
    d, st = step(obs(st, [pod(0), pod(1)], now=T0 + timedelta(seconds=61), **spec))
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "DeadlineExceeded"
    assert DeletePods(("j-0-a0", "j-1-a0")) in d.actions


@pytest.mark.parametrize(
    "spec,needle",
    [
        (dict(trainer={"training": {"precision": "fp16"}}), "spec.trainer.training.precision"),
        (dict(replicas="many"), "replicas"),
        (dict(spot={"enabled": True}), "spec.spot.nodeLabels"),
    ],
)
def test_invalid_spec_fails_without_children(spec, needle):
    d, st = step(obs(**spec))
    assert st["phase"] == "Failed"
    c = cond(st, "Failed")
    assert c["reason"] == "InvalidSpec" and needle in c["message"]
    assert kinds(d) == ["Event"] and d.actions[0].type == "Warning"
    d, _ = step(obs(st, **spec))
    assert d.actions == [] and d.status is None  # terminal: no crash loop, no retries


def test_trainer_fields_are_never_written():
    st = running()
    st = {**st, "progress": {"step": 5}, "metrics": {"auc": 0.8}}
    d, _ = step(obs(st, [pod(0), pod(1, phase="Failed", exit_code=1)]))
    assert "progress" not in d.status and "metrics" not in d.status


def test_pod_view_from_manifest():
    manifest = {
        "metadata": {"name": "j-1-a2", "labels": {"rectrain.io/rank": "1", "rectrain.io/attempt": "2"},
                     "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Failed", "reason": "Evicted",
                   "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}],
                   "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]},
    }
    v = lc.pod_view(manifest)
    assert (v.rank, v.attempt, v.phase, v.deleting, v.exit_code, v.disruption) == (1, 2, "Failed", True, 137, "EvictionByEvictionAPI")
    assert v.deleted_at == T0
    assert lc.pod_view({"metadata": {"name": "other"}}) is None


def test_permanent_waiting_reason_is_an_app_failure():
    f = classify(pod(0, phase="Pending", waiting_reason="InvalidImageName"), spot=False)
    assert (f.cause, f.reason) == ("failure", "InvalidImageName")
    assert classify(pod(0, phase="Pending", waiting_reason="ImagePullBackOff"), spot=False) is None


def test_replicas_change_restarts_gang_without_counting():
    st = running()
    d, st = step(obs(st, [pod(0), pod(1)], replicas=3))
    assert st["phase"] == "Restarting" and cond(st, "Restarting")["reason"] == "SpecChanged"
    assert (st["restarts"], st["failures"], st["preemptions"]) == (0, 0, 0)
    assert DeletePods(("j-0-a0", "j-1-a0")) in d.actions
    d, st = step(obs(st, [], now=T0 + timedelta(seconds=1), replicas=3))
    assert st["phase"] == "Pending" and st["replicas"] == 3 and CreatePods(1, (0, 1, 2), 3) in d.actions


def test_stuck_terminating_pods_are_force_deleted():
    st = running()
    _, st = step(obs(st, [pod(0), pod(1, phase="Failed", exit_code=1)]))
    stuck = pod(0, deleting=True, deleted_at=T0)
    d, _ = step(obs(st, [stuck], now=T0 + timedelta(seconds=30)))
    assert d.actions == [] and d.requeue_after == 1.0
    d, _ = step(obs(st, [stuck], now=T0 + timedelta(seconds=61)))
    assert DeletePods(("j-0-a0",), force=True) in d.actions


def test_resume_waits_for_old_pods():
    st = running()
    _, st = step(obs(st, [pod(0), pod(1)], runPolicy={"suspend": True}))
    d, st2 = step(obs(st, [pod(0, deleting=True)]))
    assert st2["phase"] == "Suspended" and "CreatePods" not in kinds(d)
    d, st3 = step(obs(st2, []))
    assert st3["phase"] == "Pending" and CreatePods(1, (0, 1), 2) in d.actions


def test_an_unreadable_status_field_is_rewritten_not_a_crash():
    st = running()
    hand_edited = {**st, "restarts": "many", "replicaCounts": {"active": -1}}
    d, fixed = step(obs(hand_edited, [pod(0), pod(1)]))
    assert d.status == {"restarts": 0, "replicaCounts": st["replicaCounts"]}
    assert fixed == st


def test_describe_names_each_field_of_a_validation_error():
    from pydantic import ValidationError

    from rectrain_api.errors import describe
    from rectrain_api.job import RecTrainJobSpec

    with pytest.raises(ValidationError) as spec_error:
        RecTrainJobSpec.model_validate({"image": "img", "replicas": 0, "runPolicy": {"backoffLimit": "x"}})
    assert describe(spec_error.value) == (
        "replicas: Input should be greater than or equal to 1; runPolicy.backoffLimit: Input should be a valid integer,"
        " unable to parse string as an integer")

    # The lifecycle gives a spec it cannot read the same field paths as every other validation path.
    d, st = step(obs(replicas=0, runPolicy={"backoffLimit": "x"}))
    assert cond(st, "Failed")["message"] == (
        "spec.replicas: Input should be greater than or equal to 1; spec.runPolicy.backoffLimit: Input should be a"
        " valid integer, unable to parse string as an integer")
    assert describe(ValueError("first line\nsecond")) == "first line"
    assert describe(RuntimeError()) == "RuntimeError"  # no message at all
