"""What the trainer's rank 0 writes into a RecTrainJob's status (`status.progress`, `status.metrics`).

The operator never writes these two fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# status.progress.checkpointJobUid: a Kubernetes uid has 36 characters; room for others, none for junk.
JOB_UID_MAX_LENGTH = 128


def readable_job_uid(value: object) -> str | None:
    """`value` when status.progress.checkpointJobUid can hold it, else None (e.g. from a hand-edited
    checkpoint): the one rule for the trainer that reports it and the operator that reads it."""
    return value if isinstance(value, str) and 0 < len(value) <= JOB_UID_MAX_LENGTH else None


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(0, ge=0, description="Current epoch (0-based).")
    step: int = Field(0, ge=0, description="Global optimizer steps done.")
    totalSteps: int | None = Field(None, ge=0, description="Global steps the run will take.")
    percent: float | None = Field(None, ge=0, le=100, description="step / totalSteps in percent.")
    loss: float | None = Field(None, description="Recent training loss (smoothed).")
    samplesPerSecond: float | None = Field(None, ge=0, description="Global training throughput.")
    etaSeconds: float | None = Field(None, ge=0, description="Estimated seconds to finish.")
    lastCheckpointStep: int | None = Field(None, ge=0, description="Step of the newest complete checkpoint.")
    resumedFromStep: int | None = Field(None, ge=0, description="Step of the checkpoint this run resumed from, if it resumed.")
    checkpointJobUid: str | None = Field(
        None, min_length=1, max_length=JOB_UID_MAX_LENGTH,
        description=(
            "metadata.uid of the RecTrainJob that wrote the checkpoint this run resumed from (from RECTRAIN_JOB_UID). "
            "Another job's uid makes the operator warn (condition CheckpointFromAnotherJob)."
        ),
    )
    updatedTime: str | None = Field(None, description="RFC 3339 time of this update.")


class TrainingMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auc: float | None = Field(None, ge=0, le=1, description="Latest held-out ROC AUC.")
    logloss: float | None = Field(None, ge=0, description="Latest held-out log loss.")
    evalStep: int | None = Field(None, ge=0, description="Step at which auc/logloss were measured.")
    rowsSkipped: int = Field(0, ge=0, description="Malformed input rows skipped (malformedRows: skip).")
