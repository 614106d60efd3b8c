"""spec.command / spec.args: what may be combined (rectrain_api.validation) and what the pods get
(the operator's builders): the user's command in exec form, the same rendezvous environment, the
checkpoint directory, and no trainer configuration."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rectrain_api import crd
from rectrain_api.job import RecTrainJob, RecTrainJobSpec
from rectrain_api.validation import check_manifest, check_spec
from rectrain_operator import builders

REF = builders.JobRef("custom", "team-a", "uid-1")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-script" / "job.yaml"


def spec(**fields) -> RecTrainJobSpec:
    return RecTrainJobSpec.model_validate({"image": "me/my-trainer:1", "command": ["python", "/app/train.py"], **fields})


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_pods_run_the_command_with_the_rendezvous_environment():
    s = spec(args=["--steps", "10"], replicas=2, resources={"cpu": "2"}, nccl={"debug": "WARN"},
             trainer={"checkpoint": {"directory": "/checkpoints/run"}})
    assert check_spec(s, REF.name) == []
    pod = builders.build_pod(s, REF, rank=1, attempt=0)
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "/app/train.py"] and container["args"] == ["--steps", "10"]
    env = env_of(pod)
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NODE_RANK",
                                "PET_NPROC_PER_NODE", "OMP_NUM_THREADS", "NCCL_DEBUG", "RECTRAIN_JOB_NAME",
                                "RECTRAIN_JOB_NAMESPACE", "RECTRAIN_CHECKPOINT_DIR")} == {
        "MASTER_ADDR": "custom-0.custom", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1", "PET_NNODES": "2",
        "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "1", "OMP_NUM_THREADS": "2", "NCCL_DEBUG": "WARN",
        "RECTRAIN_JOB_NAME": "custom", "RECTRAIN_JOB_NAMESPACE": "team-a", "RECTRAIN_CHECKPOINT_DIR": "/checkpoints/run"}
    assert "RECTRAIN_TRAINER_CONFIG" not in env  # the script gets no trainer configuration
    assert [p["name"] for p in container["ports"]] == ["rendezvous"]  # nothing serves the trainer's /metrics
    assert pod["spec"]["serviceAccountName"] == "custom-trainer"  # the per-job Role: patch this job's status


def test_several_processes_per_pod_are_the_commands_to_start_torchrun_reads_pet():
    s = spec(command=["torchrun", "/app/train.py"], procsPerReplica=4, replicas=2)
    pod = builders.build_pod(s, REF, rank=1, attempt=0)
    assert pod["spec"]["containers"][0]["command"] == ["torchrun", "/app/train.py"]  # not wrapped
    env = env_of(pod)
    assert (env["PET_NPROC_PER_NODE"], env["PET_NNODES"], env["PET_NODE_RANK"], env["WORLD_SIZE"]) == ("4", "2", "1", "8")


def test_the_built_in_trainer_is_unchanged():
    s = RecTrainJobSpec.model_validate({"image": "ghcr.io/rectrain/rectrain-trainer:0.1.0", "args": ["--progress", "off"],
                                        "trainer": {"checkpoint": {"directory": "/c"}}})
    container = builders.build_pod(s, REF, rank=0, attempt=0)["spec"]["containers"][0]
    assert container["command"] == ["rectrain-train"] and container["args"] == ["--progress", "off"]
    env = env_of(builders.build_pod(s, REF, rank=0, attempt=0))
    assert "RECTRAIN_TRAINER_CONFIG" in env and env["RECTRAIN_CHECKPOINT_DIR"] == "/c"


@pytest.mark.parametrize("trainer, field", [
    ({"training": {"batchSize": 64}}, "spec.trainer.training.batchSize"),
    ({"checkpoint": {"directory": "/c", "everySteps": 10}}, "spec.trainer.checkpoint.everySteps"),
    ({"reporting": {"metricsPort": 0}}, "spec.trainer.reporting.metricsPort"),
    ({"data": {"synthetic": {"rows": 10}}}, "spec.trainer.data.synthetic.rows"),
])
def test_trainer_fields_without_effect_are_refused_naming_the_field(trainer, field):
    errors = check_spec(spec(trainer=trainer), REF.name)
    assert len(errors) == 1 and errors[0].startswith(f"{field}: has no effect with spec.command"), errors


def apply_schema_defaults(value, schema: dict):
    """What the API server does to a stored object: every missing property with a default gets it,
    recursively (nested objects default to {} in this CRD, so their fields' defaults apply too)."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    for name, sub in schema["properties"].items():
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
        if name in value:
            value[name] = apply_schema_defaults(value[name], sub)
    return value


def test_defaults_filled_in_by_the_api_server_are_not_refused():
    """The CRD defaults every trainer field; a stored job carries them all, and is still valid."""
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    stored = apply_schema_defaults({"image": "x", "command": ["python", "t.py"], "trainer": {}}, schema)
    assert stored["trainer"]["training"]["batchSize"]  # the defaults are there
    assert check_spec(RecTrainJobSpec.model_validate(stored), REF.name) == []


def test_elastic_custom_command_needs_only_a_checkpoint_directory():
    elastic = {"minReplicas": 1, "maxReplicas": 3}
    assert check_spec(spec(elastic=elastic), REF.name) == [
        "spec.trainer.checkpoint.directory: required with spec.elastic (each resize resumes from a checkpoint)"]
    assert check_spec(spec(elastic=elastic, trainer={"checkpoint": {"directory": "/c"}}), REF.name) == []


def test_an_empty_command_is_refused():
    errors = check_manifest({"apiVersion": "rectrain.io/v1alpha1", "kind": "RecTrainJob", "metadata": {"name": "x"},
                             "spec": {"image": "x", "command": []}})
    assert errors and errors[0].startswith("spec.command:"), errors


def test_the_example_job_is_valid():
    _, doc = yaml.safe_load_all(EXAMPLE.read_text())
    assert check_manifest(doc) == []
    job = RecTrainJob.model_validate(doc)
    pods = builders.build_pods(job.spec, REF, attempt=0)
    assert len(pods) == 2 and env_of(pods[0])["RECTRAIN_CHECKPOINT_DIR"] == "/checkpoints/custom-script"
