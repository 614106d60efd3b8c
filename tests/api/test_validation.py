"""Every validation rule, good and bad, in one table (rectrain_api.validation and the Field
constraints of the models). A bad case must be refused with exactly one message that starts with
the field's full path; a good case must pass. The operator, the trainer and `kubectl rectrain
submit` run these same rules (their own tests check that they call them)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rectrain_api import job as api
from rectrain_api.quantity import parse_quantity
from rectrain_api.trainer_config import TrainerConfig
from rectrain_api.validation import check_manifest, check_spec, check_trainer, schema_messages

NAME = "dlrm"


def manifest(spec: dict, name: str | None = NAME) -> dict:
    metadata = {} if name is None else {"name": name}
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": metadata, "spec": {"image": "rectrain:dev", **spec}}


def trainer(**sections) -> dict:
    return {"trainer": sections}


def trainer_errors(section: dict) -> list[str]:
    """What the trainer refuses in its own section (schema, then rules), with section-relative paths."""
    try:
        cfg = TrainerConfig.model_validate(section)
    except ValidationError as e:
        return schema_messages(e)
    return check_trainer(cfg)


EKS_REQUIRED = {"enabled": True, "provider": "eks", "mode": "required"}
ELASTIC = {"elastic": {"minReplicas": 1, "maxReplicas": 3}}
ELASTIC_TRAINER = {"checkpoint": {"directory": "/ckpt"}, "training": {"globalBatchSize": 6144}}

# (case id, spec, metadata.name)
GOOD = [
    ("defaults", {}, NAME),
    # Drift case: with no dense features the bottom MLP is unused, so it need not end in embeddingDim.
    ("no dense features, bottomMlp unused", trainer(model={"numDenseFeatures": 0, "embeddingDim": 32}), NAME),
    ("no dense features, no bottomMlp", trainer(model={"numDenseFeatures": 0, "bottomMlp": []}), NAME),
    ("no dense features, one table, dcn", trainer(model={"numDenseFeatures": 0, "tableSizes": [10], "interaction": "dcn"}), NAME),
    ("one table with dense features", trainer(model={"tableSizes": [10]}), NAME),
    ("bottomMlp ends in embeddingDim", trainer(model={"embeddingDim": 8, "bottomMlp": [32, 8]}), NAME),
    ("empty topMlp", trainer(model={"topMlp": []}), NAME),
    ("criteo-tsv with paths", trainer(data={"source": "criteo-tsv", "paths": ["/data/day_0.gz"]}), NAME),
    ("binary with paths", trainer(data={"source": "binary", "paths": ["/data/bin"]}), NAME),
    ("bf16 on cpu", trainer(training={"precision": "bf16", "device": "cpu", "backend": "gloo"}), NAME),
    ("fp16, nccl and cuda with GPUs", {"gpusPerReplica": 1, **trainer(training={"precision": "fp16", "backend": "nccl", "device": "cuda"})}, NAME),
    ("procsPerReplica equal to GPUs", {"gpusPerReplica": 4, "procsPerReplica": 4}, NAME),
    ("world size at the limit", {"replicas": 512, "procsPerReplica": 8}, NAME),
    ("metrics off, any master port", {"masterPort": 9400, **trainer(reporting={"metricsPort": 0})}, NAME),
    ("metrics ports just below the master port", {"masterPort": 29500, "procsPerReplica": 2, **trainer(reporting={"metricsPort": 29498})}, NAME),
    ("quantities", {"resources": {"cpu": "500m", "memory": "0.5Ki", "cpuLimit": "2", "memoryLimit": "16Gi", "shmSize": "1e3"}}, NAME),
    ("generic spot with node labels", {"spot": {"enabled": True, "provider": "generic", "nodeLabels": {"pool": "spot"}}}, NAME),
    ("generic spot off, no labels", {"spot": {"enabled": False, "provider": "generic"}}, NAME),
    ("nodeSelector agrees with required spot",
     {"spot": {"enabled": True, "provider": "gke", "mode": "required"}, "scheduling": {"nodeSelector": {"cloud.google.com/gke-spot": "true"}}}, NAME),
    ("nodeSelector against preferred spot",
     {"spot": {"enabled": True, "provider": "gke"}, "scheduling": {"nodeSelector": {"cloud.google.com/gke-spot": "false"}}}, NAME),
    # eks has two alternative terms: a selector that rules out one still leaves the other.
    ("nodeSelector rules out one of two spot terms",
     {"spot": EKS_REQUIRED, "scheduling": {"nodeSelector": {"eks.amazonaws.com/capacityType": "ON_DEMAND"}}}, NAME),
    ("volume mounted", {"pod": {"volumes": [{"name": "data", "emptyDir": {}}], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}}, NAME),
    ("dshm mounted twice", {"pod": {"volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm2"}]}}, NAME),
    ("user labels and annotations",
     {"pod": {"labels": {"team": "ads", "app.kubernetes.io/name": "dlrm", "kueue.x-k8s.io/priority-class": "high"},
              "annotations": {"note": "x", "kueue.x-k8s.io/retriable-in-group": "false"}}}, NAME),
    ("longest name for its replicas", {"replicas": 10}, "a" * 61),  # hostname a...a-9: 63 characters
    ("elastic with checkpoints and a global batch", {**ELASTIC, **trainer(**ELASTIC_TRAINER)}, NAME),
    ("elastic of one size", {"elastic": {"minReplicas": 2, "maxReplicas": 2}, **trainer(**ELASTIC_TRAINER)}, NAME),
    ("global batch without elastic", trainer(training={"globalBatchSize": 100}), NAME),
]

# (case id, spec, metadata.name, the field the one message must start with)
BAD = [
    # --- schema (Field constraints, in the CRD too)
    ("replicas 0", {"replicas": 0}, NAME, "spec.replicas"),
    ("misspelled field", trainer(training={"batchsize": 64}), NAME, "spec.trainer.training.batchsize"),
    ("misspelled spec field", {"replica": 2}, NAME, "spec.replica"),
    ("table with 0 rows", trainer(model={"tableSizes": [0, 5]}), NAME, "spec.trainer.model.tableSizes[0]"),  # drift case
    ("bottomMlp layer of width 0", trainer(model={"bottomMlp": [0]}), NAME, "spec.trainer.model.bottomMlp[0]"),
    ("topMlp layer of negative width", trainer(model={"topMlp": [16, -4]}), NAME, "spec.trainer.model.topMlp[1]"),
    ("cpu not a quantity", {"resources": {"cpu": "lots"}}, NAME, "spec.resources.cpu"),
    ("negative cpu", {"resources": {"cpu": "-1"}}, NAME, "spec.resources.cpu"),
    ("memory in GB", {"resources": {"memory": "1GB"}}, NAME, "spec.resources.memory"),
    ("cpu limit", {"resources": {"cpuLimit": "10x"}}, NAME, "spec.resources.cpuLimit"),
    ("memory limit", {"resources": {"memoryLimit": "big"}}, NAME, "spec.resources.memoryLimit"),
    ("shm size", {"resources": {"shmSize": "1e3x"}}, NAME, "spec.resources.shmSize"),
    # --- metadata.name
    ("no name", {}, None, "metadata.name"),
    ("name starting with a digit", {}, "9lives", "metadata.name"),
    ("name with upper case", {}, "Dlrm", "metadata.name"),
    ("name with a dot", {}, "with.dot", "metadata.name"),
    ("name too long for its replicas", {"replicas": 10}, "a" * 62, "metadata.name"),
    # --- the trainer section (also what the trainer itself refuses)
    ("criteo-tsv without paths", trainer(data={"source": "criteo-tsv"}), NAME, "spec.trainer.data.paths"),  # drift case
    ("binary without paths", trainer(data={"source": "binary"}), NAME, "spec.trainer.data.paths"),
    ("empty bottomMlp with dense features", trainer(model={"bottomMlp": []}), NAME, "spec.trainer.model.bottomMlp"),  # drift case
    ("bottomMlp not ending in embeddingDim", trainer(model={"embeddingDim": 8}), NAME, "spec.trainer.model.bottomMlp"),
    ("dot with one vector", trainer(model={"numDenseFeatures": 0, "tableSizes": [10]}), NAME, "spec.trainer.model.tableSizes"),
    ("fp16 on device cpu", trainer(training={"precision": "fp16", "device": "cpu"}), NAME, "spec.trainer.training.precision"),
    ("nccl on device cpu", trainer(training={"backend": "nccl", "device": "cpu"}), NAME, "spec.trainer.training.backend"),
    # --- the pod's hardware
    ("fp16 without GPUs", trainer(training={"precision": "fp16"}), NAME, "spec.trainer.training.precision"),
    ("cuda without GPUs", trainer(training={"device": "cuda"}), NAME, "spec.trainer.training.device"),
    ("nccl without GPUs", trainer(training={"backend": "nccl"}), NAME, "spec.trainer.training.backend"),
    ("procsPerReplica against GPUs", {"gpusPerReplica": 2, "procsPerReplica": 3}, NAME, "spec.procsPerReplica"),
    ("world size over the limit", {"replicas": 1024, "procsPerReplica": 8}, NAME, "spec.replicas"),
    ("metrics port is the master port", {"masterPort": 9400}, NAME, "spec.trainer.reporting.metricsPort"),
    ("a local rank's metrics port is the master port",
     {"masterPort": 29501, "procsPerReplica": 2, **trainer(reporting={"metricsPort": 29500})}, NAME, "spec.trainer.reporting.metricsPort"),
    ("metrics ports past 65535", {"procsPerReplica": 4, **trainer(reporting={"metricsPort": 65534})}, NAME, "spec.trainer.reporting.metricsPort"),
    # --- scheduling
    ("generic spot without node labels", {"spot": {"enabled": True, "provider": "generic"}}, NAME, "spec.spot.nodeLabels"),
    ("nodeSelector against required spot",
     {"spot": {"enabled": True, "provider": "gke", "mode": "required"}, "scheduling": {"nodeSelector": {"cloud.google.com/gke-spot": "false"}}},
     NAME, "spec.scheduling.nodeSelector"),
    ("nodeSelector rules out every spot term",
     {"spot": EKS_REQUIRED, "scheduling": {"nodeSelector": {"eks.amazonaws.com/capacityType": "ON_DEMAND", "karpenter.sh/capacity-type": "on-demand"}}},
     NAME, "spec.scheduling.nodeSelector"),
    # --- pod additions
    ("volume without a name", {"pod": {"volumes": [{"emptyDir": {}}]}}, NAME, "spec.pod.volumes"),
    ("volume named like the operator's /dev/shm", {"pod": {"volumes": [{"name": "dshm", "emptyDir": {}}]}}, NAME, "spec.pod.volumes"),
    ("volume named twice", {"pod": {"volumes": [{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]}}, NAME, "spec.pod.volumes"),
    ("mount of an unknown volume", {"pod": {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}}, NAME, "spec.pod.volumeMounts"),
    ("label rectrain.io/job-name", {"pod": {"labels": {"rectrain.io/job-name": "other"}}}, NAME, "spec.pod.labels"),
    ("label rectrain.io/rank", {"pod": {"labels": {"rectrain.io/rank": "0"}}}, NAME, "spec.pod.labels"),
    ("label rectrain.io/attempt", {"pod": {"labels": {"rectrain.io/attempt": "0"}}}, NAME, "spec.pod.labels"),
    ("any rectrain.io/ label", {"pod": {"labels": {"rectrain.io/future": "x"}}}, NAME, "spec.pod.labels"),
    ("label managed-by", {"pod": {"labels": {"app.kubernetes.io/managed-by": "me"}}}, NAME, "spec.pod.labels"),
    ("kueue queue label", {"pod": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}}, NAME, "spec.pod.labels"),
    ("kueue pod-group label", {"pod": {"labels": {"kueue.x-k8s.io/pod-group-name": "g"}}}, NAME, "spec.pod.labels"),
    ("kueue pod-group count annotation", {"pod": {"annotations": {"kueue.x-k8s.io/pod-group-total-count": "9"}}}, NAME, "spec.pod.annotations"),
    # --- elastic
    ("elastic min above max", {"elastic": {"minReplicas": 4, "maxReplicas": 3}, **trainer(**ELASTIC_TRAINER)}, NAME, "spec.elastic.minReplicas"),
    ("elastic min 0", {"elastic": {"minReplicas": 0, "maxReplicas": 3}, **trainer(**ELASTIC_TRAINER)}, NAME, "spec.elastic.minReplicas"),
    ("elastic without checkpoints", {**ELASTIC, **trainer(training={"globalBatchSize": 6144})}, NAME, "spec.trainer.checkpoint.directory"),
    ("elastic without a global batch", {**ELASTIC, **trainer(checkpoint={"directory": "/ckpt"})}, NAME, "spec.trainer.training.globalBatchSize"),
    ("elastic name too long at maxReplicas", {**ELASTIC, **trainer(**ELASTIC_TRAINER)}, "a" * 62, "metadata.name"),
    ("elastic world size at max", {"elastic": {"minReplicas": 1, "maxReplicas": 1024}, "procsPerReplica": 8,
                                   **trainer(**ELASTIC_TRAINER)}, NAME, "spec.elastic.maxReplicas"),
    ("global batch 0", trainer(training={"globalBatchSize": 0}), NAME, "spec.trainer.training.globalBatchSize"),
]


@pytest.mark.parametrize("spec,name", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good(spec, name):
    assert check_manifest(manifest(spec, name)) == []


@pytest.mark.parametrize("spec,name,field", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_names_the_field(spec, name, field):
    errors = check_manifest(manifest(spec, name))
    assert len(errors) == 1 and errors[0].startswith(f"{field}: "), errors


# ------------------------------------------------------------------ the trainer's own view

# (trainer section, the field the one message must start with, relative to the section; None: valid)
TRAINER_SECTIONS = [
    ({"model": {"numDenseFeatures": 0, "embeddingDim": 32}}, None),
    ({"data": {"source": "criteo-tsv", "paths": ["/d"]}}, None),
    ({"training": {"precision": "fp16"}}, None),  # whether there is a GPU is the pod's business
    ({"data": {"source": "criteo-tsv"}}, "data.paths"),
    ({"model": {"tableSizes": [0, 5]}}, "model.tableSizes[0]"),
    ({"model": {"bottomMlp": []}}, "model.bottomMlp"),
    ({"model": {"embeddingDim": 8, "bottomMlp": [16]}}, "model.bottomMlp"),
    ({"model": {"numDenseFeatures": 0, "tableSizes": [3]}}, "model.tableSizes"),
    ({"training": {"precision": "fp16", "device": "cpu"}}, "training.precision"),
    ({"training": {"backend": "nccl", "device": "cpu"}}, "training.backend"),
    ({"training": {"batchsize": 64}}, "training.batchsize"),
]


@pytest.mark.parametrize("section,field", TRAINER_SECTIONS)
def test_trainer_and_operator_agree(section, field):
    """One set of rules: the trainer refuses exactly what the operator refuses in spec.trainer
    (on a GPU pod, so that only the section matters), each naming the field from its own root."""
    mine = trainer_errors(section)
    theirs = check_manifest(manifest({"trainer": section, "gpusPerReplica": 1}))
    if field is None:
        assert mine == [] and theirs == []
    else:
        assert len(mine) == 1 and mine[0].startswith(f"{field}: "), mine
        assert len(theirs) == 1 and theirs[0].startswith(f"spec.trainer.{field}: "), theirs


def test_other_fields_in_a_message_carry_the_same_prefix():
    section = {"model": {"embeddingDim": 8, "bottomMlp": [16]}}
    assert trainer_errors(section) == ["model.bottomMlp: the last size (16) must equal model.embeddingDim (8)"]
    [spec_message] = check_manifest(manifest({"trainer": section}))
    assert spec_message == "spec.trainer.model.bottomMlp: the last size (16) must equal spec.trainer.model.embeddingDim (8)"


def test_unknown_field_and_quantity_messages_say_what_is_wrong():
    assert check_manifest(manifest(trainer(training={"batchsize": 64}))) == ["spec.trainer.training.batchsize: unknown field (misspelled?)"]
    assert check_manifest(manifest({"resources": {"memory": "1GB"}})) == [
        "spec.resources.memory: '1GB' is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"
    ]


def test_check_spec_checks_the_name_only_when_given():
    spec = api.RecTrainJobSpec.model_validate({"image": "x", "replicas": 3})
    assert check_spec(spec) == []
    assert check_spec(spec, "Bad")[0].startswith("metadata.name: ")


def test_reserved_label_message_names_the_key():
    [message] = check_manifest(manifest({"pod": {"labels": {"rectrain.io/job-name": "other"}}}))
    assert "'rectrain.io/job-name'" in message and "set by the operator" in message


def test_every_reserved_key_is_refused():
    """The keys the operator writes on pods (job.py) are the keys validation refuses."""
    labels = {key: "x" for key in (api.LABEL_JOB_NAME, api.LABEL_RANK, api.LABEL_ATTEMPT, *api.RESERVED_LABELS)}
    annotations = {key: "x" for key in api.RESERVED_ANNOTATIONS}
    errors = check_manifest(manifest({"pod": {"labels": labels, "annotations": annotations}}))
    assert len(errors) == len(labels) + len(annotations), errors
    for key in [*labels, *annotations]:
        assert any(repr(key) in e for e in errors), key


# ------------------------------------------------------------------------------ quantities


@pytest.mark.parametrize(
    "text,value",
    [("500m", parse_quantity("0.5")), ("1Gi", 2**30), ("1e3", 1000), (".5", parse_quantity("0.5")), ("2", 2),
     ("x", None), ("-1", None), ("1GB", None), ("", None)],
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == value


# ------------------------------------------------------------- kubectl rectrain submit


@pytest.fixture
def plugin(monkeypatch):
    pytest.importorskip("kubernetes")
    from rectrain_kubectl import main as plugin_main

    def no_cluster(kubeconfig):
        raise AssertionError("an invalid file reached the cluster")

    monkeypatch.setattr(plugin_main, "_api", no_cluster)
    return plugin_main


def test_submit_errors_are_the_shared_rules(plugin):
    assert plugin.submit_errors(manifest({})) == []
    assert plugin.submit_errors(manifest(trainer(data={"source": "criteo-tsv"}))) == [
        "spec.trainer.data.paths: required when spec.trainer.data.source is criteo-tsv"
    ]
    assert plugin.submit_errors({"apiVersion": "v1", "kind": "ConfigMap"})[0].startswith("not a rectrain.io/v1alpha1 RecTrainJob")


def test_submit_refuses_a_misspelled_field_before_sending_anything(plugin, tmp_path, capsys):
    import yaml

    path = tmp_path / "job.yaml"
    good = manifest({}, "first")
    bad = manifest(trainer(training={"batchsize": 64}), "second")
    path.write_text(yaml.safe_dump_all([good, bad]))
    assert plugin.main(["submit", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.trainer.training.batchsize: unknown field" in err, err
