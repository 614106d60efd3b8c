"""The Argo CD health check for rectrain.io/RecTrainJob, run by a real Lua interpreter (lupa): Lua 5.1
(the dialect of Argo CD's gopher-lua) and Lua 5.4, on RecTrainJobs built with the API models and on
RecTrainJobs a real rectrain-operator wrote on the local API server."""

from __future__ import annotations

import importlib

import pytest
import yaml
from delivery_support import CHART, REPO, run, tool

from rectrain_api import job as api

ARGO = REPO / "deploy" / "argocd"
HEALTH = (ARGO / "health.lua").read_text()
LUA_VERSIONS = ["lua51", "lua54"]


def to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(obj: dict, version: str = "lua51") -> dict:
    """Run health.lua the way Argo CD does: `obj` is a global, the chunk returns {status, message}."""
    lupa = importlib.import_module(f"lupa.{version}")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(HEALTH)
    out = dict(result.items())
    assert set(out) <= {"status", "message"}, out
    assert out["status"] in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    return out


def job(status: dict | None) -> dict:
    """A RecTrainJob that the API models accept (so the fixtures cannot drift from the real schema)."""
    body = {"metadata": {"name": "dlrm", "namespace": "ml"}, "spec": {"image": "ghcr.io/rectrain/rectrain-trainer:0.1.0", "replicas": 4}}
    if status is not None:
        body["status"] = status
    return api.RecTrainJob.model_validate(body).model_dump(mode="json", exclude_none=True)


def cond(type_: str, reason: str, message: str) -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": "2026-11-25T10:00:00Z"}


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_health_mapping(version):
    assert health(job(None), version) == {"status": "Progressing", "message": "Waiting for the operator"}

    running = job({"phase": "Running", "ready": "4/4", "replicas": 4, "readyReplicas": 4,
                   "progress": {"epoch": 0, "step": 1200, "totalSteps": 5000, "percent": 24.0, "loss": 0.45678},
                   "conditions": [cond("Running", "AllRanksRunning", "all 4 ranks running")]})
    h = health(running, version)
    assert h["status"] == "Progressing"
    assert "step 1200/5000 (24%)" in h["message"] and "4/4 ranks running" in h["message"] and "loss 0.4568" in h["message"]

    # percent missing: computed from step/totalSteps, rounded down; non-integer percent rounded down too.
    assert "step 999/4000 (24%)" in health(job({"phase": "Running", "progress": {"step": 999, "totalSteps": 4000}}), version)["message"]
    assert "step 10/3 " not in health(job({"phase": "Running", "progress": {"step": 1, "totalSteps": 3, "percent": 33.3}}), version)["message"]
    assert "(33%)" in health(job({"phase": "Running", "progress": {"step": 1, "totalSteps": 3, "percent": 33.3}}), version)["message"]
    # no totalSteps: the step alone.
    assert health(job({"phase": "Running", "progress": {"step": 7}}), version)["message"].endswith("step 7")

    assert health(job({"phase": "Pending", "ready": "1/4"}), version) == {"status": "Progressing", "message": "Pending, 1/4 ranks running"}

    restarting = health(job({"phase": "Restarting", "restarts": 1, "conditions": [
        cond("Restarting", "Preempted", "rank 2 preempted (Evicted); gang restart 1")]}), version)
    assert restarting["status"] == "Progressing"
    assert "Preempted: rank 2 preempted (Evicted); gang restart 1" in restarting["message"]

    done = health(job({"phase": "Succeeded", "metrics": {"auc": 0.80123, "rowsSkipped": 0},
                       "conditions": [cond("Succeeded", "AllRanksSucceeded", "all ranks exited 0")]}), version)
    assert done == {"status": "Healthy", "message": "Succeeded, AUC 0.8012"}

    failed = health(job({"phase": "Failed", "conditions": [
        cond("Running", "AllRanksRunning", "x"),
        cond("Failed", "BackoffLimitExceeded", "3 failures > backoffLimit 2; last: rank 0 exited 1")]}), version)
    assert failed == {"status": "Degraded", "message": "BackoffLimitExceeded: 3 failures > backoffLimit 2; last: rank 0 exited 1"}
    assert health(job({"phase": "Failed"}), version) == {"status": "Degraded", "message": "Failed"}

    suspended = health(job({"phase": "Suspended", "conditions": [cond("Suspended", "Suspended", "runPolicy.suspend is true")]}), version)
    assert suspended == {"status": "Suspended", "message": "Suspended: runPolicy.suspend is true"}


def test_argocd_cm_snippet_embeds_health_lua_verbatim():
    cm = yaml.safe_load((ARGO / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {**cm["metadata"], "name": "argocd-cm", "namespace": "argocd"}
    # Argo CD's key: resource.customizations.health.<group>_<Kind>
    assert cm["data"] == {f"resource.customizations.health.{api.GROUP}_{api.KIND}": HEALTH}


def test_application_points_at_the_chart_and_its_values_pass_the_schema(tmp_path):
    app = yaml.safe_load((ARGO / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (REPO / source["path"]).resolve() == CHART
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    out = run([tool("helm"), "template", source["helm"]["releaseName"], str(CHART), "--include-crds",
               "-n", app["spec"]["destination"]["namespace"], "-f", str(values)]).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole"} <= kinds


# ------------------------------------------------------------------ objects written by a real operator


@pytest.mark.cluster
def test_health_of_jobs_a_real_operator_drives(kubeconfig, k8s_api, namespace, tmp_path):
    """rectrain-operator (subprocess) on the local API server; the test plays the kubelet and the trainer.
    Each phase the operator writes maps to the right Argo CD health."""
    from rtj_harness import Harness, Operator, install_crd

    install_crd(k8s_api)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        h = Harness(k8s_api, namespace)
        h.create_job("ok", replicas=2)
        h.create_job("bad", replicas=1, runPolicy={"backoffLimit": 0})
        h.create_job("paused", replicas=1, runPolicy={"suspend": True})

        h.wait_phase("ok", "Pending")
        pending = health(h.job("ok"))
        assert pending["status"] == "Progressing" and pending["message"].startswith("Pending")

        h.wait_pods("ok", 2)
        h.run_all("ok", 0)
        h.wait_phase("ok", "Running")
        # The trainer's rank 0 reports progress into status (as rectrain-train does).
        h.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "ok",
            {"status": {"progress": {"epoch": 0, "step": 1200, "totalSteps": 5000, "percent": 24.0, "loss": 0.5}}},
            _content_type="application/merge-patch+json")
        for version in LUA_VERSIONS:
            running = health(h.job("ok"), version)
            assert running["status"] == "Progressing"
            assert "Running, 2/2 ranks running, step 1200/5000 (24%)" in running["message"]

        h.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "ok", {"status": {"metrics": {"auc": 0.8, "rowsSkipped": 0}}},
            _content_type="application/merge-patch+json")
        for p in h.pods("ok"):
            h.exit(p.metadata.name, 0)
        h.wait_phase("ok", "Succeeded")
        assert health(h.job("ok")) == {"status": "Healthy", "message": "Succeeded, AUC 0.8000"}

        (pod,) = h.wait_pods("bad", 1)
        h.run(pod.metadata.name)
        h.exit(pod.metadata.name, 1)
        status = h.wait_phase("bad", "Failed")
        reason = next(c["reason"] for c in status["conditions"] if c["type"] == "Failed")
        degraded = health(h.job("bad"))
        assert degraded["status"] == "Degraded" and degraded["message"].startswith(reason + ": ")

        h.wait_phase("paused", "Suspended")
        assert health(h.job("paused"))["status"] == "Suspended"
    finally:
        op.kill()
