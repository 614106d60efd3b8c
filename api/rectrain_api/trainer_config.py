"""The trainer configuration: the `spec.trainer` section of a RecTrainJob.

The operator passes it to every rank unchanged (JSON in the env var named by
TRAINER_CONFIG_ENV); `rectrain-train --config FILE` reads the same section from YAML/JSON.
Single-field rules are Field constraints here (and so in the CRD); rules that relate fields are in
`rectrain_api.validation.check_trainer`, which both the operator and the trainer run.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

TRAINER_CONFIG_ENV = "RECTRAIN_TRAINER_CONFIG"
JOB_NAME_ENV = "RECTRAIN_JOB_NAME"
JOB_NAMESPACE_ENV = "RECTRAIN_JOB_NAMESPACE"
# metadata.uid: recorded in every checkpoint, so a run that resumes from another job's (an earlier job
# of the same name, or one sharing the directory) can say so.
JOB_UID_ENV = "RECTRAIN_JOB_UID"
# spec.trainer.checkpoint.directory, for every rank (a custom script checkpoints there and resumes from it).
CHECKPOINT_DIR_ENV = "RECTRAIN_CHECKPOINT_DIR"


# Layer widths and table rows: a 0-wide layer or a 0-row table is never meant (and crashes in torch).
PositiveInt = Annotated[int, Field(ge=1)]


class StrictModel(BaseModel):
    """Unknown fields are errors, so a typo names the field instead of being ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelConfig(StrictModel):
    """DLRM shape."""

    embeddingDim: int = Field(16, ge=1, le=1024, description="Width of every embedding vector.")
    tableSizes: list[PositiveInt] = Field(
        default_factory=lambda: [100_000] * 26,
        min_length=1,
        description="Rows per categorical feature's EmbeddingBag table (at least 1 each); categorical ids are hashed into this many rows.",
    )
    numDenseFeatures: int = Field(13, ge=0, le=4096, description="Count of dense (integer) features.")
    bottomMlp: list[PositiveInt] = Field(
        default_factory=lambda: [64, 16],
        description="Hidden sizes of the bottom MLP over dense features; the last must equal embeddingDim (unused without dense features).",
    )
    topMlp: list[PositiveInt] = Field(
        default_factory=lambda: [64, 32], description="Hidden sizes of the top MLP; a final 1-unit layer is added."
    )
    interaction: Literal["dot", "dcn"] = Field(
        "dot", description="Feature interaction: pairwise dot products (DLRM) or a DCNv2 cross layer."
    )
    dcnLayers: int = Field(2, ge=1, le=8, description="Cross layers when interaction is dcn.")
    sharding: Literal["auto", "replicated", "table", "row"] = Field(
        "auto",
        description=(
            "Where embedding tables live in a multi-rank job. replicated: every rank holds every table "
            "(data parallel); table: each table lives whole on one rank, placed greedily by size; row: "
            "every table is split into contiguous row blocks, one per rank; auto: replicated while a "
            "replica of all tables and their optimizer state fits shardingMemoryBudgetGiB, otherwise the "
            "largest tables are sharded (table-wise, row-wise when one table alone is too big). "
            "One rank is always replicated. Lookups travel with all_to_all (gloo and NCCL); see docs/sharding.md."
        ),
    )
    shardingMemoryBudgetGiB: float | None = Field(
        None,
        gt=0,
        description=(
            "Per-rank memory for embedding tables plus their sparse optimizer state, used by sharding auto. "
            "Unset: half of the rank's memory (the cgroup memory limit when there is one, else the host's "
            "memory divided by the ranks on it; a CUDA device's memory on GPUs)."
        ),
    )


class SyntheticDataConfig(StrictModel):
    """Criteo-shaped rows drawn from a planted logistic model, so the best reachable AUC is known."""

    rows: int = Field(100_000, ge=1, description="Training rows.")
    evalRows: int = Field(20_000, ge=1, description="Held-out evaluation rows.")
    seed: int = Field(1234, description="Seed of the planted model and the rows.")


class DataConfig(StrictModel):
    """Where the training rows come from and how bad rows are handled."""

    source: Literal["synthetic", "criteo-tsv", "binary"] = Field(
        "synthetic",
        description="synthetic: planted Criteo-shaped data; criteo-tsv: Criteo TSV files (plain or .gz); binary: the output of rectrain-preprocess.",
    )
    paths: list[str] = Field(
        default_factory=list, description="Training files (criteo-tsv) or directory (binary); required for both. Globs allowed."
    )
    evalPaths: list[str] = Field(
        default_factory=list, description="Held-out files; empty uses evalFraction of the training data."
    )
    evalFraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out when evalPaths is empty.")
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    malformedRows: Literal["error", "skip"] = Field(
        "error",
        description="error: stop with file:line on the first malformed row; skip: skip and count them (reported in status.metrics).",
    )


class OptimizerConfig(StrictModel):
    """Optimizers of the embedding tables (sparse) and the MLPs (dense), and the learning-rate schedule."""

    sparse: Literal["adagrad", "rowwise_adagrad", "sgd", "sparseadam"] = Field(
        "adagrad",
        description=(
            "Optimizer for embedding tables, applied to the rows a step touched. adagrad: per-element accumulators "
            "(torch.optim.Adagrad's update); rowwise_adagrad: one accumulator per row (FBGEMM's row-wise Adagrad: "
            "the mean of the row's squared gradient; 1/embeddingDim of adagrad's optimizer memory); sgd: plain SGD; "
            "these three are fused in-place updates. sparseadam: torch.optim.SparseAdam."
        ),
    )
    dense: Literal["adagrad", "sgd", "adam", "adamw"] = Field("adagrad", description="Optimizer for the MLPs.")
    learningRate: float = Field(0.01, gt=0, description="Peak learning rate for the dense optimizer.")
    sparseLearningRate: float | None = Field(None, gt=0, description="Learning rate for embeddings; defaults to learningRate.")
    warmupSteps: int = Field(0, ge=0, description="Linear learning-rate warmup steps.")


class TrainingConfig(StrictModel):
    """How long and how to train: steps, batch size, precision, device, backend and optimizers."""

    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    maxSteps: int | None = Field(
        None, ge=1, description="Stop after this many global steps (overrides epochs when smaller); empty: run all epochs."
    )
    batchSize: int = Field(
        2048, ge=1, description="Samples per step per rank (the global batch is batchSize x world size); unused when globalBatchSize is set."
    )
    globalBatchSize: int | None = Field(
        None,
        ge=1,
        description=(
            "Samples per step across all ranks, the same at every world size (each rank takes an equal share); "
            "elastic jobs need it, so that a step means the same rows whatever the job's size. Empty: batchSize x world size."
        ),
    )
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32",
        description=(
            "fp32: true fp32 matmuls (TF32 off on CUDA); tf32: fp32 weights, matmuls on TF32 tensor cores on CUDA "
            "(the same as fp32 on CPU); bf16: autocast to bfloat16, CPU and GPU; fp16: autocast to float16 with a "
            "GradScaler, GPU only."
        ),
    )
    seed: int = Field(0, description="Seed for model init and data order.")
    evalEverySteps: int | None = Field(
        None, ge=1, description="Evaluate AUC/logloss every N steps and at the end; empty: only at the end."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="torch.distributed backend; auto picks nccl on CUDA.")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto uses CUDA when present, else CPU (and says so).")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    dataLoaderWorkers: int = Field(1, ge=0, le=64, description="Background batch-preparation workers per rank.")

    def global_batch(self, world_size: int) -> int:
        """Samples per step across the job's ranks at this world size."""
        return self.globalBatchSize or self.batchSize * world_size


class CheckpointConfig(StrictModel):
    """Periodic checkpoints; a restarted, resumed or resized job continues from the newest complete one."""

    directory: str | None = Field(None, description="Where checkpoints go (a volume in the pod); empty disables checkpoints.")
    everySteps: int = Field(500, ge=1, description="Checkpoint every N global steps (and on SIGTERM).")
    keep: int = Field(3, ge=1, description="Complete checkpoints kept; older ones are deleted.")


class ReportingConfig(StrictModel):
    """What rank 0 reports while training: status.progress, Prometheus metrics, TensorBoard and log lines."""

    progressIntervalSeconds: float = Field(5.0, ge=0.5, description="Least time between status.progress patches by rank 0.")
    metricsPort: int = Field(9400, ge=0, le=65535, description="Port of each rank's Prometheus /metrics; 0 disables it.")
    tensorboardDir: str | None = Field(None, description="Directory to write TensorBoard scalars to; empty: no TensorBoard output.")
    logEverySteps: int = Field(50, ge=1, description="Log a progress line every N steps.")


class TrainerConfig(StrictModel):
    """Everything the trainer needs to know; the operator passes it verbatim."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    reporting: ReportingConfig = Field(default_factory=ReportingConfig)
