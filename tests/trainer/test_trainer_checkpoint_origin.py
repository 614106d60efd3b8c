"""Every checkpoint records the RecTrainJob that wrote it (RECTRAIN_JOB_UID), and a resumed run
reports the step it resumed from and that job's uid (status.progress.resumedFromStep,
checkpointJobUid): what lets the operator warn when a job silently continues another job's run
(a job re-created under the same name, or two jobs sharing checkpoint.directory)."""

from __future__ import annotations

import json
import logging

from rectrain_api.trainer_config import JOB_UID_ENV
from rectrain_trainer.config import parse_config
from rectrain_trainer.train import train
from trainer_helpers import tiny_config

OTHER_JOB = "written by another RecTrainJob"


class RecordingReporter:
    """The reporter contract (update(Progress, TrainingMetrics)), keeping what rank 0 hands over."""

    def __init__(self):
        self.progress = []

    def update(self, progress, metrics) -> None:
        self.progress.append(progress)


def _run(directory, steps: int, uid: str, monkeypatch) -> RecordingReporter:
    monkeypatch.setenv(JOB_UID_ENV, uid)
    cfg = tiny_config(training={"epochs": 5, "batchSize": 64, "maxSteps": steps},
                      checkpoint={"directory": str(directory), "everySteps": 10})
    reporter = RecordingReporter()
    train(parse_config(cfg), reporter=reporter)
    return reporter


def test_a_resumed_run_reports_its_checkpoints_step_and_the_job_that_wrote_it(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rectrain.train")
    fresh = _run(tmp_path, 20, "uid-first", monkeypatch).progress[-1]
    assert fresh.step == 20 and fresh.resumedFromStep is None and fresh.checkpointJobUid is None
    assert not [r for r in caplog.records if OTHER_JOB in r.getMessage()]

    # A new job (another uid) on the same directory continues the first one's run, and says so.
    resumed = _run(tmp_path, 30, "uid-second", monkeypatch).progress[-1]
    assert (resumed.step, resumed.resumedFromStep, resumed.checkpointJobUid) == (30, 20, "uid-first")
    warned = [r for r in caplog.records if OTHER_JOB in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING and "uid-first" in warned[0].getMessage()

    # The same job resuming its own checkpoint (a gang restart): its own uid, no warning.
    caplog.clear()
    own = _run(tmp_path, 40, "uid-second", monkeypatch).progress[-1]
    assert (own.step, own.resumedFromStep, own.checkpointJobUid) == (40, 30, "uid-second")
    assert not [r for r in caplog.records if OTHER_JOB in r.getMessage()]


def test_an_unreadable_job_uid_in_a_checkpoint_is_left_out_not_a_crash(tmp_path, monkeypatch):
    """A hand-edited trainer.json (the completion marker holding the checkpoint's metadata) with a
    jobUid the status cannot hold: the run resumes and reports no uid rather than failing."""
    _run(tmp_path, 10, "uid-first", monkeypatch)
    (marker,) = tmp_path.glob("step-*/trainer.json")
    meta = json.loads(marker.read_text())
    for odd in (7, "x" * 200):
        marker.write_text(json.dumps({**meta, "jobUid": odd}))
        resumed = _run(tmp_path, 10, "uid-second", monkeypatch).progress[-1]
        assert (resumed.resumedFromStep, resumed.checkpointJobUid) == (10, None)
