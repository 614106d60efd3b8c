"""Pure builders: spec -> manifests, no cluster."""

from __future__ import annotations

import json

import pytest

from rectrain_api.job import RecTrainJobSpec
from rectrain_api.trainer_config import TrainerConfig
from rectrain_api.validation import check_spec, longest_hostname
from rectrain_operator import builders

REF = builders.JobRef("dlrm", "team-a", "uid-1")


def spec(**kw) -> RecTrainJobSpec:
    return RecTrainJobSpec.model_validate({"image": "rectrain:dev", **kw})


def env_of(pod) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_gpu_pods_env_resources_and_tolerations():
    s = spec(replicas=8, gpusPerReplica=4, resources={"cpu": "16", "memory": "64Gi"},
             nccl={"socketIfname": "eth0", "ibDisable": True, "debug": "WARN", "env": {"NCCL_P2P_LEVEL": "NVL"}})
    pods = builders.build_pods(s, REF, attempt=2)
    assert [p["metadata"]["name"] for p in pods] == [f"dlrm-{r}-a2" for r in range(8)]
    p3 = pods[3]
    assert p3["spec"]["hostname"] == "dlrm-3" and p3["spec"]["subdomain"] == "dlrm"
    assert p3["metadata"]["labels"]["rectrain.io/job-name"] == "dlrm"
    assert p3["metadata"]["labels"]["rectrain.io/rank"] == "3"
    assert p3["metadata"]["labels"]["rectrain.io/attempt"] == "2"
    owner = p3["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "RecTrainJob" and owner["uid"] == "uid-1" and owner["controller"] is True
    c = p3["spec"]["containers"][0]
    assert c["command"] == ["rectrain-launch", "rectrain-train"], "4 ranks per pod run under torchrun"
    assert c["resources"] == {"requests": {"cpu": "16", "memory": "64Gi"},
                              "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"}}
    env = env_of(p3)
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "dlrm-0.dlrm"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "32" and env["RANK"] == "12" and env["NODE_RANK"] == "3"
    assert env["LOCAL_WORLD_SIZE"] == env["PET_NPROC_PER_NODE"] == "4"
    assert env["PET_NNODES"] == "8" and env["PET_NODE_RANK"] == "3"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_IB_DISABLE"] == "1" and env["NCCL_DEBUG"] == "WARN"
    assert env["NCCL_P2P_LEVEL"] == "NVL"
    assert env["RECTRAIN_JOB_NAME"] == "dlrm" and env["RECTRAIN_JOB_NAMESPACE"] == "team-a"
    assert TrainerConfig.model_validate_json(env["RECTRAIN_TRAINER_CONFIG"]) == s.trainer
    assert p3["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in p3["spec"]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert p3["spec"]["restartPolicy"] == "Never"
    assert p3["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert p3["spec"]["serviceAccountName"] == "dlrm-trainer"
    assert "affinity" not in p3["spec"]


def test_cpu_pods():
    s = spec(replicas=2, procsPerReplica=2, resources={"cpu": "3"})
    p = builders.build_pod(s, REF, rank=1, attempt=0)
    env = env_of(p)
    assert env["WORLD_SIZE"] == "4" and env["RANK"] == "2" and env["LOCAL_WORLD_SIZE"] == "2"
    assert env["OMP_NUM_THREADS"] == "1"
    assert p["spec"]["containers"][0]["command"] == ["rectrain-launch", "rectrain-train"]
    one_rank = builders.build_pod(spec(replicas=2, gpusPerReplica=1), REF, rank=1, attempt=0)
    assert one_rank["spec"]["containers"][0]["command"] == ["rectrain-train"], "one rank per pod needs no launcher"
    assert "nvidia.com/gpu" not in json.dumps(p)
    assert "tolerations" not in p["spec"]
    assert "NCCL_SOCKET_IFNAME" not in env


@pytest.mark.parametrize(
    "provider,labels,toleration_key",
    [
        ("gke", [{"cloud.google.com/gke-spot": "true"}], "cloud.google.com/gke-spot"),
        ("eks", [{"eks.amazonaws.com/capacityType": "SPOT"}, {"karpenter.sh/capacity-type": "spot"}], None),
        ("aks", [{"kubernetes.azure.com/scalesetpriority": "spot"}], "kubernetes.azure.com/scalesetpriority"),
        ("generic", [{"pool": "spot"}], None),
    ],
)
@pytest.mark.parametrize("mode", ["required", "preferred"])
def test_spot_presets(provider, labels, toleration_key, mode):
    extra = {"nodeLabels": {"pool": "spot"}} if provider == "generic" else {}
    s = spec(spot={"enabled": True, "provider": provider, "mode": mode,
                   "tolerations": [{"key": "x", "operator": "Exists"}], **extra})
    assert builders.validate(s, REF) == []
    pod = builders.build_pod(s, REF, 0, 0)
    terms = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in t.items()]} for t in labels]
    aff = pod["spec"]["affinity"]["nodeAffinity"]
    if mode == "required":
        assert aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == terms
    else:
        assert aff["preferredDuringSchedulingIgnoredDuringExecution"] == [{"weight": 100, "preference": t} for t in terms]
    keys = [t.get("key") for t in pod["spec"]["tolerations"]]
    assert "x" in keys
    if toleration_key:
        assert toleration_key in keys


def test_scheduling_kueue_and_overrides():
    s = spec(replicas=3,
             scheduling={"schedulerName": "volcano", "priorityClassName": "high", "nodeSelector": {"pool": "a"},
                         "tolerations": [{"key": "t", "operator": "Equal", "value": "v", "effect": "NoExecute"}],
                         "queueName": "team-q"},
             pod={"env": [{"name": "OMP_NUM_THREADS", "value": "7"}, {"name": "X", "value": "1"}],
                  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "criteo"}}],
                  "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                  "serviceAccountName": "mine", "imagePullSecrets": [{"name": "reg"}],
                  "annotations": {"a": "b"}, "labels": {"team": "ads"}})
    assert builders.validate(s, REF) == []
    p = builders.build_pod(s, REF, 2, 1)
    ps = p["spec"]
    assert ps["schedulerName"] == "volcano" and ps["priorityClassName"] == "high"
    assert ps["nodeSelector"] == {"pool": "a"}
    assert ps["tolerations"] == [{"key": "t", "operator": "Equal", "value": "v", "effect": "NoExecute"}]
    assert ps["serviceAccountName"] == "mine" and ps["imagePullSecrets"] == [{"name": "reg"}]
    labels, ann = p["metadata"]["labels"], p["metadata"]["annotations"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-q"
    assert labels["kueue.x-k8s.io/pod-group-name"] == "dlrm-a1"
    assert ann["kueue.x-k8s.io/pod-group-total-count"] == "3" and ann["a"] == "b"
    assert labels["team"] == "ads"
    env = env_of(p)
    assert env["OMP_NUM_THREADS"] == "7" and env["X"] == "1"
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in ps["containers"][0]["volumeMounts"]


def test_service_and_rbac():
    svc = builders.build_service(spec(masterPort=1234), REF)
    assert svc["metadata"]["name"] == "dlrm" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"rectrain.io/job-name": "dlrm"}
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"][0]["port"] == 1234
    sa, role, binding = builders.build_rbac(REF)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "dlrm-trainer"
    assert role["rules"] == [
        {"apiGroups": ["rectrain.io"], "resources": ["rectrainjobs"], "resourceNames": ["dlrm"], "verbs": ["get"]},
        {"apiGroups": ["rectrain.io"], "resources": ["rectrainjobs/status"], "resourceNames": ["dlrm"], "verbs": ["get", "patch"]},
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dlrm-trainer", "namespace": "team-a"}]
    for obj in (svc, sa, role, binding):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"trainer": {"training": {"precision": "fp16"}}}, "spec.trainer.training.precision"),
        ({"gpusPerReplica": 2, "procsPerReplica": 3}, "spec.procsPerReplica"),
        ({"trainer": {"model": {"embeddingDim": 8}}}, "spec.trainer.model.bottomMlp"),
        # Once refused only by the trainer, when the pods started:
        ({"trainer": {"data": {"source": "criteo-tsv"}}}, "spec.trainer.data.paths"),
        ({"trainer": {"model": {"bottomMlp": []}}}, "spec.trainer.model.bottomMlp"),
        ({"pod": {"labels": {"rectrain.io/job-name": "other"}}}, "spec.pod.labels"),
    ],
)
def test_validate_is_the_shared_rules(kw, field):
    """builders.validate is rectrain_api.validation.check_spec (every rule is tabled in tests/api)."""
    s = spec(**kw)
    errors = builders.validate(s, REF)
    assert len(errors) == 1 and errors[0].startswith(f"{field}: "), errors
    assert errors == check_spec(s, REF.name)


def test_validate_accepts_no_dense_features_with_any_bottom_mlp():
    """The bottom MLP is unused without dense features (the operator used to refuse this)."""
    s = spec(trainer={"model": {"numDenseFeatures": 0, "embeddingDim": 32}})
    assert builders.validate(s, REF) == []


def test_validate_name():
    assert builders.validate(spec(), builders.JobRef("9lives", "ns", "u"))[0].startswith("metadata.name")
    assert builders.validate(spec(replicas=10), builders.JobRef("a" * 62, "ns", "u"))[0].startswith("metadata.name")
    assert builders.validate(spec(trainer={"training": {"precision": "fp16"}}, gpusPerReplica=1), REF) == []


def test_name_length_rule_matches_the_hostnames_built():
    """validation knows the hostname scheme without importing the builders: they must agree."""
    for name, replicas in (("a" * 61, 10), ("dlrm", 1), ("b" * 58, 1000)):
        ref = builders.JobRef(name, "ns", "u")
        assert longest_hostname(name, replicas) == builders.hostname(ref, replicas - 1)
        assert len(builders.hostname(ref, replicas - 1)) <= 63
        assert builders.validate(spec(replicas=replicas), ref) == []


def test_operator_labels_and_annotations_win_over_the_pods_own():
    """Validation refuses these keys; even so, a spec that skipped it cannot relabel the pods."""
    user_labels = {
        "rectrain.io/job-name": "other", "rectrain.io/rank": "7", "rectrain.io/attempt": "9",
        "app.kubernetes.io/managed-by": "me", "kueue.x-k8s.io/queue-name": "theirs", "kueue.x-k8s.io/pod-group-name": "g",
        "team": "ads",
    }
    s = spec(replicas=3, scheduling={"queueName": "team-q"},
             pod={"labels": user_labels, "annotations": {"kueue.x-k8s.io/pod-group-total-count": "99", "note": "x"}})
    pod = builders.build_pod(s, REF, 2, 1)
    assert pod["metadata"]["labels"] == {
        "rectrain.io/job-name": "dlrm", "rectrain.io/rank": "2", "rectrain.io/attempt": "1",
        "app.kubernetes.io/managed-by": "rectrain-operator", "kueue.x-k8s.io/queue-name": "team-q",
        "kueue.x-k8s.io/pod-group-name": "dlrm-a1", "team": "ads",
    }
    assert pod["metadata"]["annotations"] == {"kueue.x-k8s.io/pod-group-total-count": "3", "note": "x"}
    assert len(builders.validate(s, REF)) == 7  # six reserved labels and the annotation


def test_pod_security_context_is_merged_over_the_restricted_default():
    ref = builders.JobRef("merge", "ml", "uid-1")
    pod = builders.build_pods(spec(pod={"securityContext": {"fsGroup": 2000}}), ref, 0, [0])[0]
    security = pod["spec"]["securityContext"]
    assert security["fsGroup"] == 2000
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    overridden = builders.build_pods(spec(pod={"securityContext": {"runAsUser": 2000}}), ref, 0, [0])[0]
    assert overridden["spec"]["securityContext"]["runAsUser"] == 2000
