"""The operator against a real API server. The harness plays the kubelet (pod status patches)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from rectrain_api.job import RecTrainJobSpec
from rectrain_operator import builders
from support import is_gone, wait_for

pytestmark = pytest.mark.cluster


def env(pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env}


def test_gpu_spot_job_children(harness, operator, k8s_api):
    spec = dict(replicas=8, gpusPerReplica=1, resources={"cpu": "8", "memory": "32Gi"},
                spot={"enabled": True, "provider": "gke", "mode": "required"},
                nccl={"socketIfname": "eth0"})
    t0 = time.monotonic()
    job = harness.create_job("gpu", **spec)
    pods = harness.wait_pods("gpu", 8, attempt=0, timeout=20)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed
    core = client.CoreV1Api(k8s_api)
    svc = core.read_namespaced_service("gpu", harness.ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == {"rectrain.io/job-name": "gpu"}
    # The pods are exactly what the pure builder renders (after API-server defaulting of the spec).
    parsed = RecTrainJobSpec.model_validate(harness.job("gpu")["spec"])
    ref = builders.JobRef("gpu", harness.ns, job["metadata"]["uid"])
    for pod in pods:
        rank = int(pod.metadata.labels["rectrain.io/rank"])
        want = builders.build_pod(parsed, ref, rank, 0)
        assert pod.metadata.name == want["metadata"]["name"] == f"gpu-{rank}-a0"
        assert pod.spec.hostname == f"gpu-{rank}" and pod.spec.subdomain == "gpu"
        assert env(pod) == {e["name"]: e["value"] for e in want["spec"]["containers"][0]["env"]}
        assert pod.spec.containers[0].resources.limits == {"memory": "32Gi", "nvidia.com/gpu": "1"}
        tolerations = {(t.key, t.effect) for t in pod.spec.tolerations}
        assert {("nvidia.com/gpu", "NoSchedule"), ("cloud.google.com/gke-spot", "NoSchedule")} <= tolerations
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        assert terms[0].match_expressions[0].key == "cloud.google.com/gke-spot"
        assert pod.metadata.owner_references[0].uid == job["metadata"]["uid"]
        assert pod.spec.service_account_name == "gpu-trainer"
    e3 = env(pods[3])
    assert (e3["MASTER_ADDR"], e3["WORLD_SIZE"], e3["RANK"], e3["NCCL_SOCKET_IFNAME"]) == ("gpu-0.gpu", "8", "3", "eth0")
    harness.run_all("gpu", 0)
    st = harness.wait_phase("gpu", "Running", ready="8/8")
    assert harness.condition("gpu", "Running")["status"] == "True"
    assert st["replicaCounts"]["running"] == 8


def test_app_failure_restarts_gang_and_honours_backoff_limit(harness, operator):
    harness.create_job("app", replicas=2, runPolicy={"backoffLimit": 1})
    harness.wait_pods("app", 2, attempt=0)
    harness.run_all("app", 0)
    harness.wait_phase("app", "Running")
    harness.exit("app-1-a0", 1)
    # The whole gang is replaced by attempt 1.
    pods = harness.wait_pods("app", 2, attempt=1)
    # The old gang goes, but for the crashed rank's pod: kept (stopped) for its log until attempt 1 runs.
    wait_for(lambda: [p.metadata.name for p in harness.pods("app", 0)] == ["app-1-a0"], what="old gang deleted, the crashed rank kept")
    st = harness.status("app")
    assert (st["failures"], st["restarts"], st["preemptions"]) == (1, 1, 0)
    assert st["lastFailure"]["cause"] == "failure" and st["lastFailure"]["exitCode"] == 1
    harness.run_all("app", 1)
    harness.wait_phase("app", "Running", attempt=1)
    wait_for(lambda: not harness.pods("app", 0), what="the kept pod deleted once attempt 1 runs")
    harness.exit(pods[0].metadata.name, 3)  # not 2: that is an invalid configuration, never retried
    st = harness.wait_phase("app", "Failed")
    assert st["failures"] == 2 and st["restarts"] == 1
    assert harness.condition("app", "Failed")["reason"] == "BackoffLimitExceeded"
    wait_for(lambda: all(p.status.phase == "Failed" or p.metadata.deletion_timestamp for p in harness.pods("app")) or not harness.pods("app"),
             what="live ranks of a failed job deleted")
    # Events are posted after the status they describe: poll for them.
    expected = {"Created", "Running", "ApplicationFailed", "Restarted", "BackoffLimitExceeded"}
    wait_for(lambda: expected <= {r for _, r, _ in harness.events("app")}, what=f"events {sorted(expected)}")


def test_invalid_configuration_fails_the_job_without_a_restart(harness, operator):
    harness.create_job("conf", replicas=2, runPolicy={"backoffLimit": 3})
    harness.wait_pods("conf", 2, attempt=0)
    harness.run_all("conf", 0)
    harness.wait_phase("conf", "Running")
    harness.exit("conf-1-a0", 2)  # the exit-code contract: invalid configuration
    st = harness.wait_phase("conf", "Failed")
    assert (st["failures"], st["restarts"], st["preemptions"], st["attempt"]) == (1, 0, 0, 0)
    failed = harness.condition("conf", "Failed")
    assert failed["reason"] == "InvalidConfiguration" and "rank 1" in failed["message"]
    assert st["lastFailure"]["reason"] == "InvalidConfiguration" and st["lastFailure"]["exitCode"] == 2
    wait_for(lambda: "InvalidConfiguration" in {r for _, r, _ in harness.events("conf")}, what="InvalidConfiguration event")
    wait_for(lambda: all(p.status.phase == "Failed" or p.metadata.deletion_timestamp for p in harness.pods("conf")),
             what="the rank still running deleted")
    assert not harness.pods("conf", 1), "no gang restart"


def test_three_preemptions_do_not_consume_backoff_limit_and_metrics(harness, operator):
    harness.create_job("spot", replicas=2, spot={"enabled": True, "provider": "generic", "nodeLabels": {"pool": "spot"}},
                       runPolicy={"backoffLimit": 0})
    for attempt, preempt in enumerate([
        lambda p: harness.evict(p),                    # kubelet eviction
        lambda p: harness.delete(p),                   # deleted by someone else (node drain, GC of a lost node)
        lambda p: harness.exit(p, 143),                # SIGTERM on a spot node
    ]):
        harness.wait_pods("spot", 2, attempt=attempt)
        harness.run_all("spot", attempt)
        harness.wait_phase("spot", "Running", attempt=attempt)
        preempt(f"spot-1-a{attempt}")
        harness.wait_pods("spot", 2, attempt=attempt + 1)
    harness.run_all("spot", 3)
    harness.wait_phase("spot", "Running", attempt=3)
    for p in harness.pods("spot", 3):
        harness.exit(p.metadata.name, 0)
    st = harness.wait_phase("spot", "Succeeded")
    assert (st["preemptions"], st["failures"], st["restarts"]) == (3, 0, 3)
    assert st["lastFailure"]["reason"] == "SpotReclaimed"
    assert harness.condition("spot", "Succeeded")["status"] == "True"
    ns = harness.ns
    m = wait_for(lambda: (lambda m: m if m.get(f'rectrain_jobs_finished_total{{namespace="{ns}",result="succeeded"}}') else None)(operator.metrics()),
                 what="finished metric")
    assert m[f'rectrain_jobs_created_total{{namespace="{ns}"}}'] == 1
    assert m[f'rectrain_job_restarts_total{{cause="preemption",namespace="{ns}"}}'] == 3
    assert m.get(f'rectrain_job_restarts_total{{cause="failure",namespace="{ns}"}}', 0) == 0
    assert m["rectrain_job_time_to_running_seconds_count"] == 1
    assert m["rectrain_reconcile_seconds_count"] > 5
    wait_for(lambda: operator.metrics().get('rectrain_jobs{phase="Succeeded"}') == 1, timeout=15, what="jobs gauge")


def test_suspend_and_resume(harness, operator):
    harness.create_job("sus", replicas=2)
    harness.wait_pods("sus", 2, attempt=0)
    harness.run_all("sus", 0)
    harness.wait_phase("sus", "Running")
    harness.patch_spec("sus", {"runPolicy": {"suspend": True}})
    harness.wait_phase("sus", "Suspended")
    wait_for(lambda: not harness.pods("sus"), what="pods deleted on suspend")
    assert harness.condition("sus", "Suspended")["status"] == "True"
    harness.patch_spec("sus", {"runPolicy": {"suspend": False}})
    harness.wait_pods("sus", 2, attempt=1)
    harness.run_all("sus", 1)
    st = harness.wait_phase("sus", "Running", attempt=1)
    assert (st["restarts"], st["failures"], st["preemptions"]) == (0, 0, 0)
    assert harness.condition("sus", "Suspended")["status"] == "False"


def test_deadline_and_ttl(harness, operator, k8s_api):
    harness.create_job("late", replicas=1, runPolicy={"activeDeadlineSeconds": 2})
    harness.create_job("ttl", replicas=2, runPolicy={"ttlSecondsAfterFinished": 1})
    harness.wait_pods("late", 1)
    harness.wait_pods("ttl", 2)
    harness.run_all("late", 0)
    harness.run_all("ttl", 0)
    for p in harness.pods("ttl"):
        harness.exit(p.metadata.name, 0)
    harness.wait_phase("late", "Failed", timeout=15)
    assert harness.condition("late", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not harness.pods("late"), what="deadline deletes running pods")
    harness.wait_phase("ttl", "Succeeded")
    wait_for(lambda: harness.status("ttl").get("childrenDeletedTime") and harness.status("ttl"), timeout=15, what="ttl")
    core = client.CoreV1Api(k8s_api)
    wait_for(lambda: not harness.pods("ttl"), what="ttl deletes pods")
    wait_for(lambda: is_gone(lambda: core.read_namespaced_service("ttl", harness.ns)), what="ttl deletes the Service")
    wait_for(lambda: is_gone(lambda: core.read_namespaced_service_account("ttl-trainer", harness.ns)),
             what="ttl deletes the ServiceAccount")
    assert harness.job("ttl")["status"]["phase"] == "Succeeded"  # the RecTrainJob is kept


def test_operator_restart_neither_duplicates_nor_orphans(harness, operator):
    harness.create_job("rs", replicas=4)
    before = {p.metadata.name: p.metadata.uid for p in harness.wait_pods("rs", 4)}
    operator.kill()
    harness.run_all("rs", 0)
    harness.exit("rs-2-a0", 1)  # fails while nobody watches
    operator.start()
    pods = harness.wait_pods("rs", 4, attempt=1)
    new_gang = {p.metadata.name for p in pods}
    wait_for(lambda: {p.metadata.name for p in harness.pods("rs")} == new_gang | {"rs-2-a0"},
             what="only the new gang, and the crashed rank's pod kept for its log")
    st = harness.status("rs")
    assert st["failures"] == 1 and st["restarts"] == 1
    operator.kill()
    operator.start()
    time.sleep(1.5)  # give a wrongly stateful operator the chance to create extra pods
    assert {p.metadata.uid for p in harness.pods("rs", 1)} == {p.metadata.uid for p in pods}
    assert {p.metadata.name for p in harness.pods("rs")} == new_gang | {"rs-2-a0"}
    assert set(before).isdisjoint(p.metadata.name for p in pods)


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"trainer": {"training": {"precision": "fp64"}}}, "spec.trainer.training.precision"),
        ({"spot": {"enabled": True, "provider": "azure"}}, "spec.spot.provider"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
        ({"image": ""}, "spec.image"),
    ],
)
def test_schema_rejects_bad_input_naming_the_field(harness, spec, field):
    with pytest.raises(ApiException) as err:
        harness.create_job("bad", **spec)
    assert err.value.status == 422
    assert field in err.value.body, err.value.body


def test_code_level_invalid_spec(harness, operator):
    harness.create_job("fp16", replicas=2, trainer={"training": {"precision": "fp16"}})
    st = harness.wait_phase("fp16", "Failed")
    cond = harness.condition("fp16", "Failed")
    assert cond["reason"] == "InvalidSpec" and "spec.trainer.training.precision" in cond["message"]
    wait_for(lambda: any(t == "Warning" and r == "InvalidSpec" for t, r, _ in harness.events("fp16")),
             what="a Warning Event InvalidSpec")
    time.sleep(1)
    assert harness.pods("fp16") == [] and st.get("restarts", 0) == 0


def test_child_rejected_by_api_server_fails_job(harness, operator):
    harness.create_job("badvol", replicas=2, pod={"volumes": [{"name": "data", "hostPath": {}}],
                                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    harness.wait_phase("badvol", "Failed")
    cond = harness.condition("badvol", "Failed")
    assert cond["reason"] == "InvalidSpec" and "is invalid" in cond["message"], cond
    assert "hostPath.path" in cond["message"]
    time.sleep(1)
    assert harness.pods("badvol") == []


def test_trainer_account_may_patch_only_its_own_status(harness, operator, k8s_api, kubeconfig):
    harness.create_job("own", replicas=1)
    harness.create_job("other", replicas=1)
    harness.wait_pods("own", 1)
    harness.wait_pods("other", 1)
    core = client.CoreV1Api(k8s_api)
    sa = wait_for(lambda: (lambda s: s if s.secrets else None)(core.read_namespaced_service_account("own-trainer", harness.ns)),
                  what="token secret")
    import base64
    token = base64.b64decode(core.read_namespaced_secret(sa.secrets[0].name, harness.ns).data["token"]).decode()
    cfg = client.Configuration()
    cfg.host = k8s_api.configuration.host
    cfg.ssl_ca_cert = k8s_api.configuration.ssl_ca_cert
    cfg.api_key = {"BearerToken": f"Bearer {token}", "authorization": f"Bearer {token}"}
    trainer = client.CustomObjectsApi(client.ApiClient(cfg))
    patch = {"status": {"progress": {"step": 7, "percent": 3.5}, "metrics": {"auc": 0.77}}}
    trainer.patch_namespaced_custom_object_status("rectrain.io", "v1alpha1", harness.ns, "rectrainjobs", "own", patch,
                                                  _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as err:
        trainer.patch_namespaced_custom_object_status("rectrain.io", "v1alpha1", harness.ns, "rectrainjobs", "other", patch,
                                                      _content_type="application/merge-patch+json")
    assert err.value.status == 403
    # The operator keeps the trainer's fields while it changes its own.
    harness.run_all("own", 0)
    st = harness.wait_phase("own", "Running")
    assert st["progress"]["step"] == 7 and st["metrics"]["auc"] == 0.77


def test_printer_columns_and_explain(harness, operator, k8s_api):
    """What `kubectl get rtj` and `kubectl explain` read: the Table view and the published OpenAPI."""
    import requests

    cfg = k8s_api.configuration
    token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    headers = {"Authorization": token} if token else {}
    kw = dict(headers=headers, verify=cfg.ssl_ca_cert or False, cert=(cfg.cert_file, cfg.key_file) if cfg.cert_file else None, timeout=10)
    harness.create_job("cols", replicas=2)
    harness.wait_pods("cols", 2)
    harness.run_all("cols", 0)
    harness.wait_phase("cols", "Running")
    url = f"{cfg.host}/apis/rectrain.io/v1alpha1/namespaces/{harness.ns}/rectrainjobs"
    table = requests.get(url, headers={**headers, "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
                         **{k: v for k, v in kw.items() if k != "headers"}).json()
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Phase", "Ready", "Progress%", "Step", "Loss", "AUC", "Restarts", "Preemptions", "Age",
                     "Size", "Desired", "Resizes", "Reason", "Message"]
    row = dict(zip(names, table["rows"][0]["cells"]))
    assert (row["Name"], row["Phase"], row["Ready"], row["Restarts"], row["Preemptions"]) == ("cols", "Running", "2/2", 0, 0)
    assert (row["Size"], row["Desired"]) == (2, 2), "-o wide: the gang's size and the size it aims for"
    assert row["Reason"] == "AllRanksRunning", "-o wide: why the job is in its phase"

    def published():
        doc = requests.get(f"{cfg.host}/openapi/v2", **kw).json()
        return doc["definitions"].get("io.rectrain.v1alpha1.RecTrainJob")

    definition = wait_for(published, timeout=30, what="CRD in /openapi/v2")
    spec = definition["properties"]["spec"]
    assert spec["description"]
    for field in ("replicas", "gpusPerReplica", "spot", "runPolicy", "trainer", "nccl", "scheduling", "pod"):
        assert spec["properties"][field]["description"], field


def _subset(want, got, path="pod"):
    """Every field the builder set is in the live object with the same value (the API server adds defaults)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), path
        for k, v in want.items():
            assert k in got, f"{path}.{k} missing"
            _subset(v, got[k], f"{path}.{k}")
    elif isinstance(want, list) and want and all(isinstance(w, dict) and "name" in w for w in want):
        by_name = {g.get("name"): g for g in got}  # e.g. the API server adds the token volume(mount)
        for w in want:
            assert w["name"] in by_name, f"{path}: {w['name']} missing"
            _subset(w, by_name[w["name"]], f"{path}[{w['name']}]")
    elif isinstance(want, list):
        if path.endswith("tolerations"):  # DefaultTolerationSeconds appends not-ready/unreachable
            got = got[: len(want)]
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (w, g) in enumerate(zip(want, got)):
            _subset(w, g, f"{path}[{i}]")
    else:
        assert str(got) == str(want) if isinstance(want, (int, float)) and isinstance(got, str) else got == want, f"{path}: {got!r} != {want!r}"


@pytest.mark.parametrize(
    "spec",
    [
        dict(replicas=2, procsPerReplica=2, resources={"cpu": "4", "memory": "2Gi"}),
        dict(replicas=2, spot={"enabled": True, "provider": "eks", "mode": "preferred"}),
        dict(replicas=2, spot={"enabled": True, "provider": "aks", "mode": "required", "tolerations": [{"key": "x", "operator": "Exists"}]}),
    ],
    ids=["cpu", "eks-preferred", "aks-required"],
)
def test_live_pods_match_builders(harness, operator, k8s_api, spec):
    job = harness.create_job("shape", **spec)
    pods = harness.wait_pods("shape", 2)
    parsed = RecTrainJobSpec.model_validate(harness.job("shape")["spec"])
    ref = builders.JobRef("shape", harness.ns, job["metadata"]["uid"])
    for pod in pods:
        live = k8s_api.sanitize_for_serialization(pod)
        want = builders.build_pod(parsed, ref, int(pod.metadata.labels["rectrain.io/rank"]), 0)
        _subset(want["spec"], live["spec"], "spec")
        _subset(want["metadata"]["labels"], live["metadata"]["labels"], "labels")
