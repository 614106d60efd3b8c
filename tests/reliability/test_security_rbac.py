"""Security with real ServiceAccount tokens on the real API server.

- A trainer pod's per-job ServiceAccount (token from the TokenRequest API, bound to the rank pod, as
  the node agent mounts it) can read its job and patch its status, and nothing else: not another
  job's status, not its own spec, not Secrets, not pods.
- The operator's RBAC, as the Helm chart renders it, has no wildcards, and the operator does its
  whole job under it (every test in tests/reliability runs it that way; here a full life cycle with a
  restart and Events, and no Forbidden in its log).
"""

from __future__ import annotations

import pytest
from jobs_support import client_with_token, token_for
from kubernetes import client
from kubernetes.client.rest import ApiException
from rectrain_api import job as api
from support import wait_for

pytestmark = [pytest.mark.cluster]


def forbidden(call, *args, **kwargs) -> bool:
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        assert exc.status == 403, f"expected 403 Forbidden, got {exc.status}: {exc.body}"
        return True
    raise AssertionError(f"{call.__name__}{args} was allowed")


def merge(body: dict) -> dict:
    return {"body": body, "_content_type": "application/merge-patch+json"}


def test_trainer_account_can_patch_only_its_own_job_status(harness, operator, k8s_api, namespace):
    for name in ("alpha", "beta"):
        harness.create_job(name, replicas=1)
    pods = {name: harness.wait_pods(name, 1)[0].metadata.name for name in ("alpha", "beta")}
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    wait_for(lambda: rbac.read_namespaced_role_binding("alpha-trainer", namespace), what="alpha's RoleBinding")

    token = token_for(k8s_api, namespace, "alpha-trainer", seconds=600, bound_pod=pods["alpha"])
    as_trainer = client_with_token(k8s_api, token)
    try:
        custom, core = client.CustomObjectsApi(as_trainer), client.CoreV1Api(as_trainer)
        group = (api.GROUP, api.VERSION, namespace, api.PLURAL)

        # Allowed: read its own job, patch its own status (what the trainer's reporter does).
        assert custom.get_namespaced_custom_object(*group, "alpha")["metadata"]["name"] == "alpha"
        progress = {"step": 7, "totalSteps": 70, "percent": 10.0}
        custom.patch_namespaced_custom_object_status(*group, "alpha", **merge({"status": {"progress": progress}}))
        assert harness.status("alpha")["progress"]["step"] == 7

        # Denied: the other job (status, read), its own spec, listing jobs, Secrets, pods.
        assert forbidden(custom.patch_namespaced_custom_object_status, *group, "beta", **merge({"status": {"progress": progress}}))
        assert forbidden(custom.get_namespaced_custom_object, *group, "beta")
        assert forbidden(custom.patch_namespaced_custom_object, *group, "alpha", **merge({"spec": {"replicas": 3}}))
        assert forbidden(custom.list_namespaced_custom_object, *group)
        assert forbidden(custom.delete_namespaced_custom_object, *group, "alpha")
        assert forbidden(core.list_namespaced_secret, namespace)
        secret_name = core_secret_name(k8s_api, namespace)
        assert forbidden(core.read_namespaced_secret, secret_name, namespace)
        assert forbidden(core.create_namespaced_pod, namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert forbidden(core.delete_namespaced_pod, pods["beta"], namespace)
        assert forbidden(core.list_namespaced_pod, namespace)
        assert forbidden(client.RbacAuthorizationV1Api(as_trainer).create_namespaced_role, namespace, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "more"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
    finally:
        as_trainer.close()
    assert "progress" not in harness.status("beta"), "beta's status was written"
    assert harness.job("alpha")["spec"]["replicas"] == 1


def core_secret_name(k8s_api, namespace: str) -> str:
    secrets = client.CoreV1Api(k8s_api).list_namespaced_secret(namespace).items
    assert secrets, "the namespace has no Secret to try to read"
    return secrets[0].metadata.name


def test_chart_rbac_has_no_wildcards_and_runs_a_full_job_life(chart_rbac, harness, operator, k8s_api, namespace):
    rules = chart_rbac.rules()
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), f"wildcard in {key}: {rule}"
        assert not rule.get("nonResourceURLs"), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert not {"secrets", "nodes", "clusterroles", "clusterrolebindings"} & set(rule["resources"]), rule

    # The operator authenticates as the chart's ServiceAccount, which is no admin.
    as_operator = client_with_token(k8s_api, token_for(k8s_api, chart_rbac.namespace, chart_rbac.account, seconds=600))
    try:
        assert forbidden(client.CoreV1Api(as_operator).list_namespaced_secret, namespace)
    finally:
        as_operator.close()

    # A full life under that RBAC: children, a failure with a gang restart, Events, success.
    harness.create_job("life", replicas=2, runPolicy={"backoffLimit": 2, "restartBackoff": {"initialSeconds": 0}})
    harness.wait_pods("life", 2, attempt=0)
    harness.run_all("life", 0)
    harness.wait_phase("life", "Running")
    harness.exit("life-1-a0", 3)
    harness.wait_pods("life", 2, attempt=1)
    # The crashed rank's pod is kept (stopped) for its log until attempt 1 runs; the other one goes.
    wait_for(lambda: [p.metadata.name for p in harness.pods("life", 0)] == ["life-1-a0"],
             what="attempt 0 deleted but for the crashed rank's pod")
    harness.run_all("life", 1)
    harness.wait_phase("life", "Running", attempt=1)
    wait_for(lambda: not harness.pods("life", 0), what="the kept pod deleted once attempt 1 runs")
    for p in harness.pods("life", 1):
        harness.exit(p.metadata.name, 0)
    status = harness.wait_phase("life", "Succeeded", failures=1, restarts=1)
    assert (status.get("preemptions") or 0) == 0
    core = client.CoreV1Api(k8s_api)
    assert core.read_namespaced_service("life", namespace)
    assert core.read_namespaced_service_account("life-trainer", namespace)
    reasons = {reason for _, reason, _ in harness.events("life")}
    assert reasons and "ChildError" not in reasons, harness.events("life")
    log = operator.log_path.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]
