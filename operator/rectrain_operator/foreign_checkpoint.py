"""A run that continues another RecTrainJob's checkpoint: said once, as condition
CheckpointFromAnotherJob and a Warning Event.

It happens when a job is deleted and created again under the same name, or when two jobs share
spec.trainer.checkpoint.directory: the new job resumes where the old one stopped, which is right
after an accidental delete and wrong when the user meant to start over. Either way the user should
know. The trainer records its job's metadata.uid in every checkpoint (RECTRAIN_JOB_UID) and reports
the uid of the one it resumed from as status.progress.checkpointJobUid (the rectrain_report SDK's
`resumed` does the same for a custom script); this policy compares it with the job's own.
"""

from __future__ import annotations

from typing import Any

from rectrain_api import job as api
from rectrain_api.progress import readable_job_uid

from rectrain_operator.conditions import condition, set_condition
from rectrain_operator.job_actions import Event
from rectrain_operator.job_observation import Observation

CONDITION = "CheckpointFromAnotherJob"


def foreign_checkpoint(obs: Observation, status: api.RecTrainJobStatus, spec: api.RecTrainJobSpec | None) -> list[Event]:
    """The Warning Event (and the condition, set in `status`) the first time the trainer reports a
    checkpoint written by another job; nothing after that, or for the job's own checkpoints."""
    progress: Any = obs.status.get("progress")
    uid = readable_job_uid(progress.get("checkpointJobUid")) if isinstance(progress, dict) else None
    if uid is None or uid == obs.uid or condition(status.conditions, CONDITION) is not None:
        return []
    step = progress.get("resumedFromStep")
    at = f" at step {step}" if isinstance(step, int) and not isinstance(step, bool) else ""
    directory = spec.trainer.checkpoint.directory if spec is not None else None
    where = f" in {directory}" if directory else ""
    message = (f"resumed{at} from a checkpoint{where} written by another RecTrainJob (uid {uid}): an earlier job of "
               "this name, or one sharing checkpoint.directory. To start from scratch instead, give the job a new "
               "checkpoint.directory")
    status.conditions = set_condition(status.conditions, CONDITION, True, "ResumedFromAnotherJob", message, obs.now)
    return [Event("Warning", CONDITION, message)]
