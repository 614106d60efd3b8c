"""The lifecycle keeps a failed attempt's evidence, classifies reclaims, and watches the rendezvous
(table tests with plain values, no cluster)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rectrain_operator import lifecycle as lc
from rectrain_operator.failure_classification import classify
from rectrain_operator.job_actions import CreatePods, DeletePods
from rectrain_operator.requeue_delays import REQUEUE_SLACK_SECONDS
from rectrain_operator.rendezvous_watchdog import DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS, rendezvous_timeout

from lifecycle_support import T0, cond, obs, pod, step


def running(now=T0, **spec):
    _, st = step(obs(now=now, **spec))
    _, st = step(obs(st, [pod(0), pod(1)], now=now, **spec))
    assert st["phase"] == "Running"
    return st


def deletes(d):
    return {n for a in d.actions if isinstance(a, DeletePods) for n in a.names}


# ---------------------------------------------------------------------- failure evidence


def test_termination_message_tail_reaches_last_failure_and_event():
    log_tail = "loading data\nstep 3\nTraceback (most recent call last):\nValueError: bad row 17"
    manifest = {"metadata": {"name": "j-1-a0", "labels": {"rectrain.io/rank": "1", "rectrain.io/attempt": "0"}},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {
                    "terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}}}]}}
    failed = lc.pod_view(manifest)
    d, st = step(obs(running(), [pod(0), failed]))
    assert "ValueError: bad row 17" in st["lastFailure"]["message"]
    assert "loading data" not in st["lastFailure"]["message"]  # trimmed to the last lines
    event = next(a for a in d.actions if isinstance(a, lc.Event) and a.reason == "ApplicationFailed")
    assert "ValueError: bad row 17" in event.message


def test_failed_attempts_ended_pods_are_kept_until_the_next_attempt_runs():
    spec = dict(runPolicy={"restartBackoff": {"initialSeconds": 0}})
    crashed = pod(1, phase="Failed", exit_code=1)
    d, st = step(obs(running(**spec), [pod(0), crashed], **spec))
    assert st["phase"] == "Restarting" and deletes(d) == {"j-0-a0"}  # the running rank is stopped, the crashed kept
    # Restarting does not wait for the kept pod, nor delete it.
    d, st = step(obs(st, [crashed], now=T0 + timedelta(seconds=1), **spec))
    assert st["phase"] == "Pending" and CreatePods(1, (0, 1), 2) in d.actions and not deletes(d)
    # Still kept while the next attempt is pending ...
    new = [pod(0, "Pending", attempt=1), pod(1, "Pending", attempt=1)]
    d, st = step(obs(st, [crashed, *new], now=T0 + timedelta(seconds=2), **spec))
    assert not deletes(d) and d.requeue_after == pytest.approx(600 - 2 + REQUEUE_SLACK_SECONDS)
    # ... and deleted once it runs.
    new = [pod(0, attempt=1), pod(1, attempt=1)]
    d, st = step(obs(st, [crashed, *new], now=T0 + timedelta(seconds=3), **spec))
    assert st["phase"] == "Running" and deletes(d) == {"j-1-a0"}


def test_kept_pods_go_after_keep_failed_pods_seconds_and_zero_keeps_none():
    spec = dict(runPolicy={"restartBackoff": {"initialSeconds": 0}, "keepFailedPodsSeconds": 30})
    crashed = pod(1, phase="Failed", exit_code=1)
    _, st = step(obs(running(**spec), [pod(0), crashed], **spec))
    _, st = step(obs(st, [crashed], now=T0 + timedelta(seconds=1), **spec))
    pending = [pod(0, "Pending", attempt=1), pod(1, "Pending", attempt=1)]
    d, _ = step(obs(st, [crashed, *pending], now=T0 + timedelta(seconds=31), **spec))
    assert deletes(d) == {"j-1-a0"}  # the gang never ran: the limit ends the keeping
    spec = dict(runPolicy={"keepFailedPodsSeconds": 0})
    d, _ = step(obs(running(**spec), [pod(0), crashed], **spec))
    assert deletes(d) == {"j-0-a0", "j-1-a0"}


def test_an_attempt_older_than_the_last_failed_one_is_not_kept():
    spec = dict(runPolicy={"restartBackoff": {"initialSeconds": 0}})
    _, st = step(obs(running(**spec), [pod(0), pod(1, phase="Failed", exit_code=1)], **spec))
    old = pod(1, phase="Failed", exit_code=1, attempt=0)
    st = {**st, "attempt": 1, "phase": "Running"}  # attempt 1 ran and failed too
    d, _ = step(obs(st, [old, pod(0, attempt=1), pod(1, phase="Failed", exit_code=1, attempt=1)], **spec))
    assert deletes(d) == {"j-1-a0", "j-0-a1"}  # attempt 0 goes; attempt 1's crashed rank stays


# ------------------------------------------------------------------------------ reclaims


def test_a_reclaim_in_progress_is_reported_as_an_eviction_with_its_reason():
    reclaimed = pod(1, deleting=True, disruption="TerminationByCloudProvider",
                    disruption_message="the spot instance's capacity was reclaimed")
    on_spot = classify(reclaimed, spot=True)
    assert (on_spot.cause, on_spot.reason) == ("preemption", "TerminationByCloudProvider")
    assert "spot capacity reclaimed" in on_spot.message and "capacity was reclaimed" in on_spot.message
    drained = classify(pod(1, deleting=True, disruption="EvictionByEvictionAPI"), spot=False)
    assert drained.reason == "EvictionByEvictionAPI" and "evicted" in drained.message
    assert classify(pod(1, deleting=True), spot=False).reason == "PodDeleted"  # no sign of who: generic


def test_pod_view_reads_the_disruption_message():
    manifest = {"metadata": {"name": "j-0-a0", "deletionTimestamp": "2026-01-01T00:00:20Z",
                             "labels": {"rectrain.io/rank": "0", "rectrain.io/attempt": "0"}},
                "status": {"phase": "Running", "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByCloudProvider", "message": "reclaimed"}]}}
    view = lc.pod_view(manifest)
    assert (view.disruption, view.disruption_message, view.deleting) == ("TerminationByCloudProvider", "reclaimed", True)


# ------------------------------------------------------------------- rendezvous watchdog


def progress_at(when):
    return {"progress": {"step": 1, "updatedTime": lc.fmt_time(when)}}


def test_no_first_step_within_the_timeout_stalls_and_restarts_as_a_failure():
    spec = dict(runPolicy={"rendezvousTimeoutSeconds": 60, "restartBackoff": {"initialSeconds": 0}})
    _, st = step(obs(**spec))
    d, st = step(obs(st, [pod(0, started_at=T0), pod(1, started_at=T0)], **spec))
    assert st["phase"] == "Running" and d.requeue_after == pytest.approx(60 + REQUEUE_SLACK_SECONDS)
    ranks = [pod(0, started_at=T0), pod(1, started_at=T0)]
    d, st2 = step(obs(st, ranks, now=T0 + timedelta(seconds=59), **spec))
    assert st2["phase"] == "Running" and cond(st2, "Stalled") is None
    assert d.requeue_after == pytest.approx(1 + REQUEUE_SLACK_SECONDS)
    d, st3 = step(obs(st2, ranks, now=T0 + timedelta(seconds=60), **spec))
    stalled = cond(st3, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RendezvousTimeout"
    assert "rank pods 0-1" in stalled["message"] and "60s" in stalled["message"]
    assert st3["phase"] == "Restarting" and st3["failures"] == 1 and st3["lastFailure"]["reason"] == "RendezvousTimeout"
    assert lc.Event("Warning", "Stalled", stalled["message"]) in d.actions
    assert deletes(d) == {"j-0-a0", "j-1-a0"}


def test_a_report_of_this_attempt_keeps_the_watchdog_quiet_and_clears_stalled():
    spec = dict(runPolicy={"rendezvousTimeoutSeconds": 60})
    ranks = [pod(0, started_at=T0), pod(1, started_at=T0)]
    st = running(**spec)
    later = T0 + timedelta(seconds=600)
    d, st2 = step(obs({**st, **progress_at(T0 + timedelta(seconds=5))}, ranks, now=later, **spec))
    assert st2["phase"] == "Running" and cond(st2, "Stalled") is None
    # A report from an earlier attempt (before these ranks started) does not count.
    d, st3 = step(obs({**st, **progress_at(T0 - timedelta(seconds=5))}, ranks, now=later, **spec))
    assert st3["phase"] == "Restarting"
    # A stalled job's next attempt that reports clears the condition.
    st4 = {**st, "conditions": [*st["conditions"], {"type": "Stalled", "status": "True", "reason": "RendezvousTimeout"}]}
    _, st5 = step(obs({**st4, **progress_at(T0 + timedelta(seconds=5))}, ranks, now=later, **spec))
    assert cond(st5, "Stalled")["status"] == "False" and cond(st5, "Stalled")["reason"] == "Progressing"


def test_watchdog_defaults_and_off_switch():
    from rectrain_api.job import RecTrainJobSpec
    assert rendezvous_timeout(RecTrainJobSpec(image="i")) == DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS
    assert rendezvous_timeout(RecTrainJobSpec(image="i", command=["python", "x.py"])) == 0
    assert rendezvous_timeout(RecTrainJobSpec(image="i", command=["x"], runPolicy={"rendezvousTimeoutSeconds": 9})) == 9
    spec = dict(runPolicy={"rendezvousTimeoutSeconds": 0})
    d, st = step(obs(running(**spec), [pod(0), pod(1)], now=T0 + timedelta(days=1), **spec))
    assert st["phase"] == "Running" and d.actions == []
