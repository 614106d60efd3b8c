"""`kubectl rectrain logs` says precisely why a rank's log is gone (pure: from the job's status)."""

from __future__ import annotations

from rectrain_kubectl.logs import missing_log_reason


def job(status, **run_policy):
    return {"spec": {"replicas": 2, "runPolicy": run_policy}, "status": status}


FAILED_RANK_1 = {"rank": 1, "reason": "Error", "message": "rank 1 exited with code 7: boom"}


def test_not_started_yet():
    assert "has not started yet (the job is Running, at attempt 1)" in missing_log_reason(job({"attempt": 1, "phase": "Running"}), 0, 3)
    assert "no attempt yet" in missing_log_reason(job({}), 0, 0)


def test_deleted_after_its_successor_ran_or_the_keep_limit():
    running = job({"attempt": 1, "phase": "Running", "lastFailure": FAILED_RANK_1})
    reason = missing_log_reason(running, 1, 0)
    assert "deleted after its successor, attempt 1, ran" in reason and "boom" in reason
    pending = job({"attempt": 1, "phase": "Pending", "lastFailure": FAILED_RANK_1}, keepFailedPodsSeconds=30)
    assert "runPolicy.keepFailedPodsSeconds=30 after the failure" in missing_log_reason(pending, 1, 0)
    assert "keepFailedPodsSeconds=0" in missing_log_reason(job({"attempt": 1, "phase": "Running"}, keepFailedPodsSeconds=0), 1, 0)


def test_a_rank_stopped_by_the_restart_and_older_attempts():
    running = job({"attempt": 2, "phase": "Running", "lastFailure": FAILED_RANK_1})
    assert "still running when rank 1 failed" in missing_log_reason(running, 0, 1)
    assert "only the last failed attempt's pods (attempt 1)" in missing_log_reason(running, 1, 0)


def test_ttl_suspension_and_current_attempt():
    assert "ttlSecondsAfterFinished=60" in missing_log_reason(
        job({"attempt": 0, "phase": "Succeeded", "childrenDeletedTime": "2026-01-01T00:00:00Z"}, ttlSecondsAfterFinished=60), 0, 0)
    assert "suspended" in missing_log_reason(job({"attempt": 0, "phase": "Suspended"}), 0, None)
    assert "not created yet" in missing_log_reason(job({"attempt": 0, "phase": "Pending"}), 0, None)
    assert "still running when the job failed" in missing_log_reason(job({"attempt": 0, "phase": "Failed", "lastFailure": FAILED_RANK_1}), 0, 0)
