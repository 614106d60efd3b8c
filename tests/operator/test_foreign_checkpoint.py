"""foreign_checkpoint: a run that resumed from a checkpoint another RecTrainJob wrote gets
condition CheckpointFromAnotherJob and one Warning Event; its own checkpoints and bad values get
nothing. Table tests through lifecycle.decide, the operator's decision core."""

from __future__ import annotations

from lifecycle_support import T0, cond, obs, pod, step

from rectrain_operator import lifecycle as lc

RUNNING = {"phase": "Running", "attempt": 0, "startTime": "2026-01-01T00:00:00Z"}
PODS = [pod(0), pod(1)]


def _warnings(d) -> list:
    return [a for a in d.actions if isinstance(a, lc.Event) and a.reason == "CheckpointFromAnotherJob"]


def test_another_jobs_checkpoint_is_said_once_as_a_condition_and_a_warning_event():
    status = {**RUNNING, "progress": {"step": 120, "resumedFromStep": 100, "checkpointJobUid": "old-uid"}}
    d, status = step(obs(status, PODS, trainer={"checkpoint": {"directory": "/ckpt/run"}}))
    (event,) = _warnings(d)
    assert event.type == "Warning"
    assert "step 100" in event.message and "/ckpt/run" in event.message and "old-uid" in event.message
    c = cond(status, "CheckpointFromAnotherJob")
    assert c["status"] == "True" and c["reason"] == "ResumedFromAnotherJob" and c["message"] == event.message
    assert status["phase"] == "Running"

    # The next reconciles (and the next attempts, resuming from the job's own checkpoints) say nothing more.
    again, status = step(obs({**status, "progress": {**status["progress"], "step": 130}}, PODS))
    assert _warnings(again) == [] and cond(status, "CheckpointFromAnotherJob")["status"] == "True"


def test_the_jobs_own_checkpoint_or_no_checkpoint_says_nothing():
    for progress in ({"step": 5}, {"step": 50, "resumedFromStep": 40, "checkpointJobUid": "u"}):
        d, status = step(obs({**RUNNING, "progress": progress}, PODS))
        assert _warnings(d) == [] and cond(status, "CheckpointFromAnotherJob") is None


def test_odd_progress_values_never_crash_the_operator():
    for progress in ("text", {"checkpointJobUid": 7}, {"checkpointJobUid": ""}, {"checkpointJobUid": None},
                     {"checkpointJobUid": "old", "resumedFromStep": "x"}):
        d, status = step(obs({**RUNNING, "progress": progress}, PODS, now=T0))
        assert status["phase"] == "Running"
        if isinstance(progress, dict) and progress.get("checkpointJobUid") == "old":
            assert "at step" not in _warnings(d)[0].message  # an unreadable step is left out, not printed
        else:
            assert _warnings(d) == []
