"""The Helm chart, checked with the real helm 3 binary, kubernetes-validate --strict and the local API server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from delivery_support import CHART, REPO, run, tool
from support import is_gone, wait_for

# What rectrain-operator calls (operator/rectrain_operator/cluster.py, main.py), verb by verb.
EXPECTED_RULES = {
    ("rectrain.io", "rectrainjobs"): {"get", "list", "watch"},
    ("rectrain.io", "rectrainjobs/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    ("", "services"): {"get", "create", "delete"},
    ("", "serviceaccounts"): {"get", "create", "delete"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "delete"},
    ("", "events"): {"create"},
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
# kopf peering (on by default): list+watch the peering object(s) and patch keep-alives into them.
CLUSTER_PEERING_RULES = {("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"}}
NS_PEERING_RULES = {("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"}}
PEERING_KINDS = ("ClusterKopfPeering", "KopfPeering")  # kopf.dev custom kinds: kubernetes-validate has no schema

CUSTOM_VALUES = {
    "image": {"repository": "registry.example.com/ml/rectrain-operator", "tag": "9.9.9", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespaces": ["team-a", "team-b"],
    "metrics": {"port": 9090, "service": {"port": 9090}, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "liveness": {"port": 9091},
    "extraArgs": ["--verbose"],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "ml"},
}


def helm(*args: str, **kw):
    return run([tool("helm"), *args], **kw)


def write_values(tmp_path: Path, values: dict, name: str = "values.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(tmp_path: Path, values: dict | None = None, namespace: str = "rectrain-system") -> list[dict]:
    args = ["template", "rel", str(CHART), "--namespace", namespace]
    if values:
        args += ["-f", write_values(tmp_path, values)]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# ------------------------------------------------------------------------------------ static


def test_chart_ships_the_generated_crd_byte_for_byte():
    shipped = CHART / "crds" / "rectrainjobs.rectrain.io.yaml"
    generated = REPO / "crds" / "rectrainjobs.rectrain.io.yaml"
    assert shipped.read_bytes() == generated.read_bytes(), (
        "charts/rectrain-operator/crds/ differs from crds/: run `make crd` and "
        "`cp crds/rectrainjobs.rectrain.io.yaml charts/rectrain-operator/crds/`")
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["rectrainjobs.rectrain.io.yaml"]


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES, {"watchNamespaces": ["solo"], "serviceAccount": {"create": False, "name": "existing"}}],
                         ids=["default", "custom", "existing-sa"])
def test_helm_lint_strict(tmp_path, values):
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["-f", write_values(tmp_path, values)]
    out = helm(*args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["default", "custom"])
def test_rendered_manifests_pass_kubernetes_validate_strict(tmp_path, values):
    docs = render(tmp_path, values)
    known = [d for d in docs if d["kind"] not in ("ServiceMonitor", *PEERING_KINDS)]  # not core kinds: no schema to check them by
    assert len(known) < len(docs)
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(known))
    # 1.25 is the oldest schema set kubernetes-validate ships; every kind here is unchanged since 1.20.
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.25.0", str(path)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout and "WARN" not in result.stdout, result.stdout


def test_default_render(tmp_path):
    docs = render(tmp_path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterKopfPeering", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
                     "CustomResourceDefinition", "CustomResourceDefinition", "Deployment", "Secret", "Service", "Service",
                     "ServiceAccount", "ValidatingWebhookConfiguration"]  # the webhook's: test_helm_webhook.py
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/rectrain/rectrain-operator:0.1.0"  # tag defaults to appVersion
    assert "command" not in c  # the image's ENTRYPOINT runs rectrain-operator
    assert "--metrics-port=8080" in c["args"] and "--liveness-endpoint=http://0.0.0.0:8081/healthz" in c["args"]
    assert not any(a.startswith("--namespace") for a in c["args"])  # all namespaces
    # Peering: the ClusterKopfPeering "rectrain-operator" (all namespaces), created by the chart.
    # The name every rectrain-operator joins by default (not the release's), and a priority above a
    # hand-started operator's 0: one started by `make demo` stands by beside this one.
    assert {"--peering=rectrain-operator", "--priority=100", "--peering-lifetime=60"} <= set(c["args"])
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    (peering,) = by_kind(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "rectrain-operator"
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert sorted(crds) == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "healthz": 8081, "webhook": 9443}
    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "rel-rectrain-operator"
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-rectrain-operator-metrics"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    roles = {r["metadata"]["name"]: rules_of(r) for r in by_kind(docs, "ClusterRole")}
    assert roles == {"rectrain-system-rel-rectrain-operator": {**EXPECTED_RULES, **CLUSTER_PEERING_RULES},
                     "rectrain-system-rel-rectrain-operator-crds": CRD_RULES}
    for binding in by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-rectrain-operator", "namespace": "rectrain-system"}]
    assert not by_kind(docs, "Role")


def test_custom_render(tmp_path):
    docs = render(tmp_path, CUSTOM_VALUES)
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/ml/rectrain-operator:9.9.9" and c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert [a for a in c["args"] if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--verbose" in c["args"] and "--metrics-port=9090" in c["args"]
    assert "--liveness-endpoint=http://0.0.0.0:9091/healthz" in c["args"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert c["resources"] == CUSTOM_VALUES["resources"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == CUSTOM_VALUES[key]
    assert dep["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "ml"
    # Namespaced RBAC: one Role + RoleBinding per watched namespace, only the CRD ClusterRole stays.
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(rules_of(r) == {**EXPECTED_RULES, **NS_PEERING_RULES} for r in roles)
    # Peering: a KopfPeering in each watched namespace, no ClusterKopfPeering.
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    assert not by_kind(docs, "ClusterKopfPeering")
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert [rules_of(r) for r in by_kind(docs, "ClusterRole")] == [CRD_RULES]
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_peering_values(tmp_path):
    docs = render(tmp_path, {"peering": {"name": "rectrain-ha", "priority": 100, "lifetime": 20, "installCRDs": False}})
    (c,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert {"--peering=rectrain-ha", "--priority=100", "--peering-lifetime=20"} <= set(c["args"])
    assert [p["metadata"]["name"] for p in by_kind(docs, "ClusterKopfPeering")] == ["rectrain-ha"]
    assert not by_kind(docs, "CustomResourceDefinition")
    # Disabled: standalone (the operator's own default is peering) -- no objects, CRDs or rights for peering.
    docs = render(tmp_path, {"peering": {"enabled": False}})
    (dep,) = by_kind(docs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith(("--peering", "--priority")) for a in c["args"]) and "--standalone" in c["args"]
    assert not any(e["name"] == "POD_ID" for e in c["env"])
    assert not [d for d in docs if d["kind"] in (*PEERING_KINDS, "CustomResourceDefinition")]
    assert {r["metadata"]["name"]: rules_of(r) for r in by_kind(docs, "ClusterRole")}["rectrain-system-rel-rectrain-operator"] == EXPECTED_RULES


BAD_VALUES = [
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy must be one of the following"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0: Does not match pattern"),
    ({"securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}}, "securityContext.allowPrivilegeEscalation"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "podSecurityContext.runAsNonRoot"),
    ({"metrics": {"port": 70000}}, "metrics.port"),
    ({"replicaCount": 2}, "Additional property replicaCount is not allowed"),
    ({"extraArgs": ["verbose"]}, "extraArgs.0: Does not match pattern"),
    ({"operator": {"logFormat": "xml"}}, "operator.logFormat must be one of the following"),
    ({"peering": {"priority": "high"}}, "peering.priority: Invalid type"),
    ({"peering": {"lifetime": 0}}, "peering.lifetime: Must be greater than or equal to 1"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[m.split(":")[0].split(" ")[0] for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(tmp_path, values, message):
    result = helm("template", "rel", str(CHART), "-f", write_values(tmp_path, values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_service_monitor_needs_the_metrics_service(tmp_path):
    values = write_values(tmp_path, {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    result = helm("template", "rel", str(CHART), "-f", values, check=False)
    assert result.returncode != 0 and "metrics.serviceMonitor.enabled needs metrics.service.enabled" in result.stderr
    # Without either, no Service and no ServiceMonitor are rendered.
    docs = render(tmp_path, {"metrics": {"service": {"enabled": False}}})
    assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == ["rel-rectrain-operator-webhook"]
    assert not by_kind(docs, "ServiceMonitor")


# ------------------------------------------------------------------------------------ on the cluster


def can_i(kubeconfig: str, verb: str, resource: str, namespace: str | None, sa: str) -> bool:
    resource, _, sub = resource.partition("/")
    args = [tool("kubectl"), "auth", "can-i", verb, resource, f"--as={sa}"] + ([f"--subresource={sub}"] if sub else [])
    args += ["-n", namespace] if namespace else ["-A"]
    result = run(args, kubeconfig=kubeconfig, check=False)
    return result.stdout.strip() == "yes"


@pytest.mark.cluster
def test_bad_values_fail_at_install_and_create_nothing(kubeconfig, namespace, tmp_path, k8s_api):
    from kubernetes import client

    values = write_values(tmp_path, {"image": {"pullPolicy": "Sometimes"}})
    result = helm("install", "bad", str(CHART), "-n", namespace, "-f", values, kubeconfig=kubeconfig, check=False)
    assert result.returncode != 0 and "image.pullPolicy must be one of the following" in result.stderr
    assert not client.AppsV1Api(k8s_api).list_namespaced_deployment(namespace).items
    assert "bad" not in helm("list", "-n", namespace, "-q", kubeconfig=kubeconfig).stdout.split()


@pytest.mark.cluster
def test_clusterwide_install_grants_least_privilege(kubeconfig, namespace, k8s_api):
    """Default values (all namespaces): ClusterRole/Binding created; the service account may do exactly
    what the operator does. A nodeSelector nothing matches keeps this operator from really running
    (it would reconcile every test's jobs)."""
    from kubernetes import client

    release = f"cw{uuid.uuid4().hex[:5]}"
    helm("install", release, str(CHART), "-n", namespace, "--set-string", "nodeSelector.rectrain\\.io/nowhere=true",
         "--wait=false", kubeconfig=kubeconfig)
    try:
        rbac = client.RbacAuthorizationV1Api(k8s_api)
        name = f"{namespace}-{release}-rectrain-operator"
        role = rbac.read_cluster_role(name)
        assert rules_of(k8s_api.sanitize_for_serialization(role)) == {**EXPECTED_RULES, **CLUSTER_PEERING_RULES}
        # The peering CRDs (when missing) and the ClusterKopfPeering come from the chart's hooks.
        assert client.CustomObjectsApi(k8s_api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "rectrain-operator")
        assert rbac.read_cluster_role_binding(name).subjects[0].namespace == namespace
        sa = f"system:serviceaccount:{namespace}:{release}-rectrain-operator"
        for verb, resource in [("create", "pods"), ("watch", "rectrainjobs.rectrain.io"), ("patch", "rectrainjobs.rectrain.io/status"),
                               ("create", "roles.rbac.authorization.k8s.io"), ("create", "events")]:
            assert can_i(kubeconfig, verb, resource, None, sa), (verb, resource)
        assert can_i(kubeconfig, "patch", "clusterkopfpeerings.kopf.dev", None, sa)
        for verb, resource in [("create", "clusterkopfpeerings.kopf.dev"), ("delete", "clusterkopfpeerings.kopf.dev"),
                               ("create", "deployments.apps"), ("get", "secrets"), ("patch", "pods"),
                               ("delete", "rectrainjobs.rectrain.io"), ("update", "rectrainjobs.rectrain.io/status"),
                               ("patch", "rectrainjobs.rectrain.io"), ("create", "clusterroles.rbac.authorization.k8s.io"),
                               ("escalate", "roles.rbac.authorization.k8s.io"), ("bind", "roles.rbac.authorization.k8s.io")]:
            assert not can_i(kubeconfig, verb, resource, None, sa), (verb, resource)
        dep = client.AppsV1Api(k8s_api).read_namespaced_deployment(f"{release}-rectrain-operator", namespace)
        assert dep.spec.strategy.type == "Recreate" and dep.spec.replicas == 1
    finally:
        helm("uninstall", release, "-n", namespace, kubeconfig=kubeconfig)
        # Hooks outlive the release (documented): clean up the cluster-scoped peering object.
        try:
            client.CustomObjectsApi(k8s_api).delete_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", "rectrain-operator")
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    with pytest.raises(client.ApiException) as err:
        client.RbacAuthorizationV1Api(k8s_api).read_cluster_role(f"{namespace}-{release}-rectrain-operator")
    assert err.value.status == 404


def _create_refused(harness, name: str, trainer: dict) -> str | None:
    """The admission message when creating this job is refused; None (and the job deleted) when it was
    admitted, e.g. while the webhook's pod is not serving yet (failurePolicy Ignore)."""
    from kubernetes import client

    try:
        harness.create_job(name, replicas=1, trainer=trainer)
    except client.ApiException as exc:
        if "denied the request" in (exc.body or ""):
            return exc.body
        raise
    from rectrain_api import job as api

    harness.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, harness.ns, api.PLURAL, name)
    wait_for(lambda: is_gone(lambda: harness.job(name)), timeout=30, what=f"job {name} to go")
    return None


def operator_pod(core, namespace: str, release: str):
    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}").items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return live[0] if len(live) == 1 else None


@pytest.mark.cluster
@pytest.mark.slow
def test_install_runs_the_operator_and_upgrade_rolls_it(kubeconfig, namespace, k8s_api, local_cluster, tmp_path):
    """helm install (namespaced) on the local cluster: the node runs rectrain-operator from the chart's
    Deployment, with only the chart's RBAC, and it reconciles a RecTrainJob (creating its pods, Service and
    per-job RBAC). helm upgrade adds a watched namespace and flags and rolls the pod (Recreate)."""
    from kubernetes import client
    from rtj_harness import Harness, install_crd

    if local_cluster is not None and not local_cluster_has_node(k8s_api):
        pytest.skip("the local cluster has no node agent (not root): the operator pod cannot run here")
    install_crd(k8s_api)
    core, apps = client.CoreV1Api(k8s_api), client.AppsV1Api(k8s_api)
    release = f"op{uuid.uuid4().hex[:5]}"
    # Another namespace for the upgrade to add.
    other = f"{namespace[:50]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels={"rectrain.io/test": "true"})))
    try:
        # The chart's admission webhook (on by default) is called by the API server at the operator pod's
        # address (the local API server routes to endpoints: there is no kube-proxy).
        values = write_values(tmp_path, {"watchNamespaces": [namespace], "operator": {"resyncSeconds": 5, "workers": 2}})
        out = helm("install", release, str(CHART), "-n", namespace, "-f", values, kubeconfig=kubeconfig).stdout
        assert f"It watches: {namespace}." in out  # NOTES.txt
        name = f"{release}-rectrain-operator"
        assert client.RbacAuthorizationV1Api(k8s_api).read_namespaced_role(name, namespace)
        sa = f"system:serviceaccount:{namespace}:{name}"
        assert can_i(kubeconfig, "create", "pods", namespace, sa)
        assert not can_i(kubeconfig, "create", "pods", other, sa)  # namespaced: nothing beyond the watched ones
        assert not can_i(kubeconfig, "list", "rectrainjobs.rectrain.io", None, sa)
        first = wait_for(lambda: (p := operator_pod(core, namespace, release)) and p.status.phase == "Running" and p,
                         timeout=90, what="the chart's operator pod to run")
        wait_for(lambda: apps.read_namespaced_deployment(name, namespace).status.available_replicas == 1,
                 timeout=60, what="the Deployment to be available")

        h = Harness(k8s_api, namespace)
        # A spec only the cross-field rules refuse: the webhook refuses it at create, naming the field.
        fp16_on_cpu = {"training": {"precision": "fp16", "device": "cpu"}}
        refused = wait_for(lambda: _create_refused(h, "fp16-on-cpu", fp16_on_cpu), timeout=60,
                           what="the chart's webhook to refuse fp16 on CPU")
        assert "spec.trainer.training.precision" in refused
        h.create_job("via-helm", replicas=2)
        status = h.wait_phase("via-helm", "Pending", timeout=60)
        assert status["replicas"] == 2
        wait_for(lambda: len(h.pods("via-helm")) == 2, timeout=30, what="rank pods created by the chart's operator")
        assert core.read_namespaced_service("via-helm", namespace)
        assert client.RbacAuthorizationV1Api(k8s_api).read_namespaced_role_binding("via-helm-trainer", namespace)

        # Upgrade: a second namespace, --verbose; Recreate rolls the single pod.
        values = write_values(tmp_path, {"watchNamespaces": [namespace, other], "extraArgs": ["--verbose"],
                                         "operator": {"resyncSeconds": 5, "workers": 2}},
                                "v2.yaml")
        helm("upgrade", release, str(CHART), "-n", namespace, "-f", values, kubeconfig=kubeconfig)
        history = json.loads(helm("history", release, "-n", namespace, "-o", "json", kubeconfig=kubeconfig).stdout)
        assert [r["revision"] for r in history] == [1, 2] and history[-1]["status"] == "deployed"
        assert client.RbacAuthorizationV1Api(k8s_api).read_namespaced_role(name, other)
        assert can_i(kubeconfig, "create", "pods", other, sa)
        second = wait_for(lambda: (p := operator_pod(core, namespace, release)) and p.metadata.uid != first.metadata.uid
                          and p.status.phase == "Running" and p, timeout=90, what="the upgraded operator pod to run")
        args = second.spec.containers[0].args
        assert "--verbose" in args and f"--namespace={other}" in args
        # The upgraded operator serves the new namespace too.
        Harness(k8s_api, other).create_job("second-ns", replicas=1)
        Harness(k8s_api, other).wait_phase("second-ns", "Pending", timeout=60)

        helm("uninstall", release, "-n", namespace, kubeconfig=kubeconfig)
        wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}").items,
                 timeout=60, what="the operator pod to go after uninstall")
        with pytest.raises(client.ApiException):
            client.RbacAuthorizationV1Api(k8s_api).read_namespaced_role(name, other)
    finally:
        run([tool("helm"), "uninstall", release, "-n", namespace], kubeconfig=kubeconfig, check=False)
        core.delete_namespace(other, propagation_policy="Background")


def local_cluster_has_node(k8s_api) -> bool:
    from kubernetes import client

    return bool(client.CoreV1Api(k8s_api).list_node().items)
