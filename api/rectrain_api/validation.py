"""The rules that relate fields of a RecTrainJob or of a trainer section, in one place.

A rule about one field alone is a Field constraint in the models (`job.py`, `trainer_config.py`), so
it is in the CRD and the API server enforces it. What is here is what a Kubernetes 1.20 structural
schema cannot say. Everyone who checks a configuration runs these same functions:

- the operator: `builders.validate` -> `check_spec` (a failing job ends Failed/InvalidSpec);
- the trainer: `config.parse_config` -> `check_trainer` (exits with a configuration error);
- `kubectl rectrain submit`: `check_manifest` (refuses the file before sending it).

Every message is "<field path>: <what is wrong>", the path complete from the root of what was
checked: `spec.trainer.model.bottomMlp` for a RecTrainJob, `model.bottomMlp` for a trainer section.
An empty list means valid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from rectrain_api.job import (
    COSCHEDULING_GROUP_LABEL,
    KUEUE_COUNT_ANNOTATION,
    KUEUE_GROUP_LABEL,
    KUEUE_QUEUE_LABEL,
    RESERVED_ANNOTATIONS,
    RESERVED_LABEL_PREFIX,
    RESERVED_LABELS,
    PodOverrides,
    RecTrainJob,
    RecTrainJobSpec,
    VOLCANO_GROUP_ANNOTATION,
    spot_node_terms,
)
from rectrain_api.quantity import QUANTITY_PATTERN
from rectrain_api.trainer_config import DataConfig, ModelConfig, TrainerConfig, TrainingConfig

MAX_WORLD_SIZE = 4096
MAX_HOSTNAME_LENGTH = 63  # a DNS label
SHM_VOLUME = "dshm"  # the operator's memory-backed /dev/shm volume in every rank pod
TRAINER_IN_SPEC = "spec.trainer."

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_KUEUE_KEYS = (KUEUE_QUEUE_LABEL, KUEUE_GROUP_LABEL, KUEUE_COUNT_ANNOTATION)


# ------------------------------------------------------------------------------------ schema


def schema_messages(error: ValidationError, prefix: str = "") -> list[str]:
    """pydantic's errors in the same "<field path>: <what is wrong>" form as the rules below."""
    return [f"{_location(e['loc'], prefix)}: {_reason(e)}" for e in error.errors()]


def _location(loc: Sequence[int | str], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path and not path.endswith(".") else str(part)
    return path.rstrip(".") or "<root>"


def _reason(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field (misspelled?)"
    if error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == QUANTITY_PATTERN:
        return f"{error['input']!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"
    return str(error["msg"])


# ------------------------------------------------------------------------------- trainer


def check_trainer(cfg: TrainerConfig, prefix: str = "") -> list[str]:
    """The cross-field rules of a trainer section. `prefix` is where the section sits ("" for the
    trainer's own file, "spec.trainer." inside a RecTrainJob); every field path in a message has it."""
    return [*_model_rules(cfg.model, prefix), *_data_rules(cfg.data, prefix), *_device_rules(cfg.training, prefix)]


def _model_rules(model: ModelConfig, at: str) -> list[str]:
    dim = f"{at}model.embeddingDim ({model.embeddingDim})"
    if model.numDenseFeatures > 0:
        # The bottom MLP's output joins the embeddings as one more vector of the interaction.
        if not model.bottomMlp:
            return [f"{at}model.bottomMlp: needs at least one layer, the last of size {dim}, with {at}model.numDenseFeatures > 0"]
        if model.bottomMlp[-1] != model.embeddingDim:
            return [f"{at}model.bottomMlp: the last size ({model.bottomMlp[-1]}) must equal {dim}"]
        return []
    # No dense features: the bottom MLP is unused, but a lone table has no pair to dot with.
    if model.interaction == "dot" and len(model.tableSizes) < 2:
        return [
            f"{at}model.tableSizes: the dot interaction needs two vectors: give at least two tables, "
            f"dense features ({at}model.numDenseFeatures), or {at}model.interaction dcn"
        ]
    return []


def _data_rules(data: DataConfig, at: str) -> list[str]:
    if data.source in ("criteo-tsv", "binary") and not data.paths:
        return [f"{at}data.paths: required when {at}data.source is {data.source}"]
    return []


def _device_rules(training: TrainingConfig, at: str) -> list[str]:
    """Contradictions within the section; whether the pod has a GPU at all is check_spec's business."""
    errors = []
    if training.device == "cpu" and training.precision == "fp16":
        errors.append(f"{at}training.precision: fp16 needs a CUDA device but {at}training.device is cpu (use bf16 on CPU)")
    if training.device == "cpu" and training.backend == "nccl":
        errors.append(f"{at}training.backend: nccl needs a CUDA device but {at}training.device is cpu (use gloo)")
    return errors


# ---------------------------------------------------------------------------------- spec


def check_spec(spec: RecTrainJobSpec, name: str | None = None) -> list[str]:
    """Every cross-field rule of a RecTrainJob's spec, its trainer section included, and of its
    metadata.name when given (the name becomes the Service's and the pods' hostnames)."""
    return [
        *([] if name is None else _name_rules(name, spec.desired_replicas)),
        *_process_rules(spec),
        *(_custom_command_rules(spec) if spec.custom_command else _builtin_trainer_rules(spec)),
        *_spot_rules(spec),
        *_volume_rules(spec.pod),
        *_reserved_metadata_rules(spec.pod),
        *_elastic_rules(spec),
        *_gang_rules(spec),
    ]


def _builtin_trainer_rules(spec: RecTrainJobSpec) -> list[str]:
    return [*_gpu_rules(spec), *check_trainer(spec.trainer, prefix=TRAINER_IN_SPEC), *_port_rules(spec)]


# The one trainer field a custom command uses: it becomes RECTRAIN_CHECKPOINT_DIR.
CUSTOM_COMMAND_TRAINER_FIELDS = ("checkpoint.directory",)


def _custom_command_rules(spec: RecTrainJobSpec) -> list[str]:
    """spec.command runs the user's program, which never reads the trainer section: a trainer field
    given anyway would silently do nothing, so it is refused (checkpoint.directory excepted). Compared
    with the defaults, not by what was written: the API server fills every default in."""
    return [
        f"{TRAINER_IN_SPEC}{path}: has no effect with spec.command (your program gets no trainer configuration); "
        f"remove it (only {TRAINER_IN_SPEC}checkpoint.directory applies, as RECTRAIN_CHECKPOINT_DIR)"
        for path in _changed_fields(spec.trainer, TrainerConfig())
        if path not in CUSTOM_COMMAND_TRAINER_FIELDS
    ]


def _changed_fields(model: BaseModel, default: BaseModel, at: str = "") -> list[str]:
    """Dotted paths of the leaf fields of `model` whose values differ from `default`'s."""
    paths = []
    for name in type(model).model_fields:
        value, default_value = getattr(model, name), getattr(default, name)
        if isinstance(value, BaseModel) and default_value is None:
            # An optional section the API server filled in as {} plus its defaults is still unset.
            default_value = _defaults_of(type(value))
        if isinstance(value, BaseModel) and isinstance(default_value, BaseModel):
            paths += _changed_fields(value, default_value, f"{at}{name}.")
        elif value != default_value:
            paths.append(f"{at}{name}")
    return paths


def _defaults_of(model: type[BaseModel]) -> BaseModel | None:
    try:
        return model()
    except ValidationError:  # it has required fields: any value was given on purpose
        return None


def longest_hostname(name: str, replicas: int) -> str:
    """The hostname of the last rank's pod (<job>-<rank>, as builders.hostname makes it)."""
    return f"{name}-{replicas - 1}"


def _name_rules(name: str, replicas: int) -> list[str]:
    errors = []
    if not _DNS1035_LABEL.match(name):
        errors.append(
            f"metadata.name: {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter): it names the headless Service"
        )
    longest = longest_hostname(name, replicas)
    # Pod names (<hostname>-a<attempt>) may be 253 long, but the hostname is one DNS label.
    if len(longest) > MAX_HOSTNAME_LENGTH:
        errors.append(
            f"metadata.name: too long for {replicas} ranks: pod hostname {longest!r} exceeds {MAX_HOSTNAME_LENGTH} characters"
        )
    return errors


def _process_rules(spec: RecTrainJobSpec) -> list[str]:
    errors = []
    if spec.gpusPerReplica > 0 and spec.procsPerReplica not in (None, spec.gpusPerReplica):
        errors.append(
            f"spec.procsPerReplica: {spec.procsPerReplica} conflicts with spec.gpusPerReplica {spec.gpusPerReplica} (one process per GPU); leave it empty"
        )
    if spec.world_size > MAX_WORLD_SIZE:
        field = "spec.elastic.maxReplicas" if spec.elastic else "spec.replicas"
        errors.append(f"{field}: world size {spec.world_size} (replicas x procs) exceeds {MAX_WORLD_SIZE}")
    return errors


def _elastic_rules(spec: RecTrainJobSpec) -> list[str]:
    """A resize restarts the gang from its last checkpoint, with the same global batch."""
    if spec.elastic is None:
        return []
    elastic, errors = spec.elastic, []
    if elastic.minReplicas > elastic.maxReplicas:
        errors.append(f"spec.elastic.minReplicas: {elastic.minReplicas} exceeds spec.elastic.maxReplicas {elastic.maxReplicas}")
    if not spec.trainer.checkpoint.directory:
        errors.append(f"{TRAINER_IN_SPEC}checkpoint.directory: required with spec.elastic (each resize resumes from a checkpoint)")
    # A custom program keeps its global batch constant itself (it sees WORLD_SIZE at every size).
    if spec.trainer.training.globalBatchSize is None and not spec.custom_command:
        errors.append(
            f"{TRAINER_IN_SPEC}training.globalBatchSize: required with spec.elastic (the global batch stays the same at every size; "
            f"e.g. {spec.trainer.training.batchSize * spec.world_size} = batchSize x ranks at maxReplicas)"
        )
    return errors


def _gpu_rules(spec: RecTrainJobSpec) -> list[str]:
    if spec.gpusPerReplica > 0:
        return []
    training = spec.trainer.training
    errors = []
    # With device cpu, _device_rules already refuses fp16 and nccl (one message per mistake).
    if training.precision == "fp16" and training.device != "cpu":
        errors.append(f"{TRAINER_IN_SPEC}training.precision: fp16 needs GPUs (set spec.gpusPerReplica > 0, or use bf16 on CPU)")
    if training.device == "cuda":
        errors.append(f"{TRAINER_IN_SPEC}training.device: cuda needs GPUs (set spec.gpusPerReplica > 0)")
    if training.backend == "nccl" and training.device != "cpu":
        errors.append(f"{TRAINER_IN_SPEC}training.backend: nccl needs GPUs (set spec.gpusPerReplica > 0, or use gloo)")
    return errors


def _port_rules(spec: RecTrainJobSpec) -> list[str]:
    """Each local process of a pod serves /metrics on metricsPort + its local rank; rank 0 listens
    on masterPort for the rendezvous. A clash only shows when the pods start, as 'address in use'."""
    first = spec.trainer.reporting.metricsPort
    if not first:
        return []
    last = first + spec.procs - 1
    served = f"the ranks of a pod serve metrics on port {first}" if first == last else f"the ranks of a pod serve metrics on ports {first}-{last}"
    field = f"{TRAINER_IN_SPEC}reporting.metricsPort"
    if first <= spec.masterPort <= last:
        return [f"{field}: {served}, which takes spec.masterPort ({spec.masterPort}), rank 0's rendezvous port"]
    if last > 65535:
        return [f"{field}: {served}, past 65535"]
    return []


def _spot_rules(spec: RecTrainJobSpec) -> list[str]:
    spot = spec.spot
    if not spot.enabled:
        return []
    if spot.provider == "generic" and not spot.nodeLabels:
        return ["spec.spot.nodeLabels: provider generic needs the labels that identify spot nodes"]
    if spot.mode != "required":
        return []
    # A node may match any one term; the selector makes spot impossible only when it clashes with all.
    selector = spec.scheduling.nodeSelector
    clashes = [_clash(term, selector) for term in spot_node_terms(spot)]
    if clashes and all(clashes):
        return [f"spec.scheduling.nodeSelector: {' and '.join(c for c in clashes if c)}"]
    return []


def _clash(term: Mapping[str, str], selector: Mapping[str, str]) -> str | None:
    """Why no node can match both the spot term and the nodeSelector, or None when one can."""
    for key, value in term.items():
        if key in selector and selector[key] != value:
            return f"{key}={selector[key]} contradicts spec.spot (required {key}={value})"
    return None


def _volume_rules(pod: PodOverrides) -> list[str]:
    errors = []
    names = [v.get("name") for v in pod.volumes]
    if None in names:
        errors.append("spec.pod.volumes: every volume needs a name")
    if SHM_VOLUME in names:
        errors.append(f"spec.pod.volumes: {SHM_VOLUME!r} is the operator's /dev/shm volume; use another name")
    for duplicate in sorted({n for n in names if n is not None and names.count(n) > 1}):
        errors.append(f"spec.pod.volumes: {duplicate!r} is named twice")
    for mount in pod.volumeMounts:
        if mount.name not in names and mount.name != SHM_VOLUME:
            errors.append(f"spec.pod.volumeMounts: {mount.name!r} is not in spec.pod.volumes")
    return errors


def _reserved_metadata_rules(pod: PodOverrides) -> list[str]:
    """The operator finds, counts and gangs its pods by these keys; a user value would break that,
    so it is refused rather than silently overwritten."""
    errors = []
    for key in sorted(pod.labels):
        if key.startswith(RESERVED_LABEL_PREFIX) or key in RESERVED_LABELS:
            errors.append(f"spec.pod.labels: {key!r} is set by the operator; remove it{_kueue_hint(key)}")
    for key in sorted(pod.annotations):
        if key in RESERVED_ANNOTATIONS:
            errors.append(f"spec.pod.annotations: {key!r} is set by the operator; remove it{_kueue_hint(key)}")
    return errors


def _gang_rules(spec: RecTrainJobSpec) -> list[str]:
    """spec.scheduling.gang: the pod-group key it sets is the operator's, and scheduleTimeoutSeconds
    exists only in the coscheduling plugin's PodGroup (silently ignoring it would mislead)."""
    scheduling, errors = spec.scheduling, []
    if scheduling.scheduleTimeoutSeconds is not None and scheduling.gang != "coscheduling":
        errors.append(
            f"spec.scheduling.scheduleTimeoutSeconds: only used with spec.scheduling.gang coscheduling "
            f"(gang is {scheduling.gang}; Volcano and Kueue have no per-group timeout)"
        )
    if scheduling.gang == "coscheduling" and COSCHEDULING_GROUP_LABEL in spec.pod.labels:
        errors.append(f"spec.pod.labels: {COSCHEDULING_GROUP_LABEL!r} is set by the operator with spec.scheduling.gang coscheduling; remove it")
    if scheduling.gang == "volcano" and VOLCANO_GROUP_ANNOTATION in spec.pod.annotations:
        errors.append(f"spec.pod.annotations: {VOLCANO_GROUP_ANNOTATION!r} is set by the operator with spec.scheduling.gang volcano; remove it")
    return errors


def _kueue_hint(key: str) -> str:
    return " (spec.scheduling.queueName makes the pods a Kueue pod group)" if key in _KUEUE_KEYS else ""


# ------------------------------------------------------------------------------ manifest


def check_manifest(doc: Mapping[str, Any]) -> list[str]:
    """A whole RecTrainJob manifest, as a user would apply it: the schema (unknown fields are
    errors, as kubectl's validation makes them), then every rule of check_spec. The caller has
    checked that it is a RecTrainJob at all (apiVersion and kind)."""
    try:
        job = RecTrainJob.model_validate(doc)
    except ValidationError as e:
        return schema_messages(e)
    name = job.metadata.get("name")
    if not isinstance(name, str) or not name:
        return ["metadata.name: required"]
    return check_spec(job.spec, name)
