"""kopf peering (`--peering`, operator/rectrain_operator/standby.py) on the real API server: a replica with a
lower priority stands by and touches nothing, and takes over once the active one is gone; under the RBAC
the Helm chart grants, peering needs nothing more. The peering CRDs and objects come from the real chart."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest
from jobs_support import chart_rbac_applied, render_chart
from support import wait_for

LIFETIME = 4  # --peering-lifetime: how long a killed replica still counts as alive


def apply_peering(k8s_api, namespace: str, release: str, *set_args: str) -> tuple[str, list[dict]]:
    """The chart's peering CRDs (if missing) and its KopfPeering for `namespace`, as helm renders them."""
    from kubernetes import client

    docs = render_chart(release, namespace, f"watchNamespaces={{{namespace}}}", *set_args)
    ext = client.ApiextensionsV1Api(k8s_api)
    for crd in [d for d in docs if d["kind"] == "CustomResourceDefinition"]:
        try:
            ext.create_custom_resource_definition(crd)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    custom = client.CustomObjectsApi(k8s_api)
    wait_for(lambda: custom.list_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings") is not None,
             timeout=30, what="the KopfPeering CRD served")
    (peering,) = [d for d in docs if d["kind"] == "KopfPeering"]
    assert peering["metadata"]["namespace"] == namespace
    custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", peering)
    return peering["metadata"]["name"], docs


def peering_args(name: str, priority: int) -> list[str]:
    return ["--peering", name, "--priority", str(priority), "--peering-lifetime", str(LIFETIME)]


def active(op) -> bool:
    return op.metrics().get("rectrain_operator_active") == 1.0


def reconciles(op) -> float:
    return op.metrics()["rectrain_reconcile_seconds_count"]  # a missing series fails, it does not read as 0


# ------------------------------------------------------------------------------------ the rule, no cluster


def test_verdict_follows_kopfs_rule():
    from rectrain_operator.standby import verdict

    now = time.time()

    def entry(priority: int, age: float, lifetime: int = 60) -> dict:
        seen = datetime.fromtimestamp(now - age, timezone.utc).isoformat()
        return {"priority": priority, "lifetime": lifetime, "lastseen": seen}

    me = {"me": entry(1, 0)}
    assert verdict({"status": {**me, "hi": entry(2, 1)}}, "me", 1, now)[0].startswith("higher-priority")
    assert verdict({"status": {**me, "same": entry(1, 1)}}, "me", 1, now)[0].startswith("same-priority")
    assert verdict({"status": {**me, "lo": entry(0, 1)}}, "me", 1, now)[0] is None
    assert verdict({"status": {**me, "dead": entry(5, 10, lifetime=5)}}, "me", 1, now)[0] is None
    # Until our own keep-alive is visible to the others, and without a peering object, stand by.
    assert verdict({"status": {"lo": entry(0, 1)}}, "me", 1, now)[0] is not None
    assert verdict(None, "me", 1, now)[0] is not None
    # It re-evaluates when a blocking peer's lifetime runs out.
    assert verdict({"status": {**me, "hi": entry(2, 2, lifetime=5)}}, "me", 1, now)[1] == pytest.approx(3, abs=0.1)


# ------------------------------------------------------------------------------------ on the cluster


def test_standby_does_nothing_then_takes_over(kubeconfig, k8s_api, namespace, crd_installed, harness, tmp_path):
    from rtj_harness import Operator

    name, _ = apply_peering(k8s_api, namespace, f"p{uuid.uuid4().hex[:5]}")
    a = Operator(kubeconfig, namespace, tmp_path / "a.log", extra_args=peering_args(name, 1))
    b = Operator(kubeconfig, namespace, tmp_path / "b.log", extra_args=peering_args(name, 2))
    try:
        a.start()
        wait_for(lambda: active(a), timeout=30, what="A active while alone")
        b.start()
        wait_for(lambda: active(b) and not active(a), timeout=30, what="B (higher priority) active, A standing by")
        assert "higher-priority peer(s) alive" in a.log_path.read_text()
        assert reconciles(a) == 0  # no job existed while A was active

        # Only B acts: children, status, the whole way to Running.
        harness.create_job("first", replicas=2)
        harness.wait_pods("first", 2, attempt=0)
        assert harness.core.read_namespaced_service("first", namespace)
        harness.run_all("first", 0)
        harness.wait_phase("first", "Running")
        # A resync period (5 s) has passed at least once on both (B relists on every one).
        wait_for(lambda: reconciles(b) >= 3, timeout=30, what="B to reconcile repeatedly")
        a_metrics = a.metrics()
        # A's scrape holds the series read here (an empty one would pass every "A did nothing" check)...
        assert a_metrics.get("rectrain_operator_active") == 0.0, a_metrics
        assert a_metrics.get("rectrain_reconcile_seconds_count") == 0.0, a_metrics
        # ...and counts no job created in any namespace (a labelled counter has no sample before its first count).
        assert not any(k.startswith("rectrain_jobs_created_total") and v for k, v in a_metrics.items())
        assert b.metrics()[f'rectrain_jobs_created_total{{namespace="{namespace}"}}'] == 1.0

        # B dies without a goodbye: A takes over once B's keep-alive expires, and relists everything.
        b.kill()
        killed = time.monotonic()
        wait_for(lambda: active(a), timeout=LIFETIME + 20, what="A to take over after B died")
        assert time.monotonic() - killed < LIFETIME + 20
        assert "active (no live peer with the same or a higher priority)" in a.log_path.read_text()
        harness.create_job("second", replicas=1)
        harness.wait_pods("second", 1, attempt=0, timeout=30)
        harness.wait_phase("second", "Pending")
        assert reconciles(a) > 0
        assert a.metrics()[f'rectrain_jobs_created_total{{namespace="{namespace}"}}'] == 1.0  # "second" only
        # "first" was adopted untouched: same pods, still Running.
        assert [p.metadata.name for p in harness.pods("first")] == ["first-0-a0", "first-1-a0"]
        assert harness.status("first")["phase"] == "Running"
    finally:
        b.kill()
        a.kill()


def test_peering_under_the_charts_rbac(kubeconfig, k8s_api, namespace, crd_installed, harness, tmp_path):
    """The operator with --peering as the chart's ServiceAccount (namespaced install): it becomes active and
    reconciles, and nothing it or kopf does is forbidden."""
    from kubernetes import client
    from rtj_harness import Operator

    release = f"p{uuid.uuid4().hex[:5]}"
    name, docs = apply_peering(k8s_api, namespace, release)
    with chart_rbac_applied(k8s_api, kubeconfig, docs, namespace, tmp_path / "sa-kubeconfig") as (rbac_docs, _, path):
        peering_rules = [r for d in rbac_docs if d["kind"] == "Role" for r in d["rules"] if "kopf.dev" in r["apiGroups"]]
        assert peering_rules == [{"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["list", "watch", "patch"]}]
        (dep,) = [d for d in docs if d["kind"] == "Deployment"]
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--peering={name}" in args and "--priority=100" in args
        op = Operator(str(path), namespace, tmp_path / "operator.log", extra_args=peering_args(name, 0))
        try:
            op.start()
            wait_for(lambda: active(op), timeout=30, what="the operator active under the chart's RBAC")
            harness.create_job("rbac", replicas=2)
            harness.wait_pods("rbac", 2, attempt=0)
            harness.wait_phase("rbac", "Pending")
            # Its keep-alive is in the peering object (kopf's patch went through).
            peering = client.CustomObjectsApi(k8s_api).get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", name)
            assert len(peering.get("status") or {}) == 1
        finally:
            op.kill()
        log = op.log_path.read_text()
        assert "forbidden" not in log.lower() and " 403" not in log, log[-3000:]


def test_a_hand_started_operator_stands_by_beside_the_charts(kubeconfig, k8s_api, namespace, crd_installed, harness, tmp_path):
    """`make demo`'s operator (no peering flags: it joins the default peering, which it creates) and then
    the chart's (its Deployment's args): one acts, the other stands by, and each action happens once."""
    from rtj_harness import Operator

    docs = render_chart(f"p{uuid.uuid4().hex[:5]}", namespace, f"watchNamespaces={{{namespace}}}")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    chart_args = [a for a in dep["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith(("--peering", "--priority"))]
    assert "--peering=rectrain-operator" in chart_args and "--priority=100" in chart_args
    demo = Operator(kubeconfig, namespace, tmp_path / "demo.log", default_peering=True)
    chart = Operator(kubeconfig, namespace, tmp_path / "chart.log", extra_args=chart_args)
    try:
        demo.start()
        wait_for(lambda: active(demo), timeout=30, what="the demo's operator active while alone")
        chart.start()
        wait_for(lambda: active(chart) and not active(demo), timeout=30, what="the chart's operator active, the demo's standing by")
        harness.create_job("once", replicas=2)
        harness.wait_pods("once", 2, attempt=0)
        harness.run_all("once", 0)
        harness.wait_phase("once", "Running")
        for pod in harness.pods("once", 0):
            harness.exit(pod.metadata.name, 0)
        harness.wait_phase("once", "Succeeded")
        wait_for(lambda: reconciles(chart) >= 3, timeout=30, what="a few more reconciles (resyncs) of the active one")
        reasons = [reason for _, reason, _ in harness.events("once")]
        assert reasons.count("Created") == 1 and reasons.count("Succeeded") == 1, reasons
        assert reconciles(demo) == 0
    finally:
        chart.kill()
        demo.kill()
