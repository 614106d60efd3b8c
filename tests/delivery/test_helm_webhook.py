"""The chart's admission webhook (templates/webhook.yaml): the configuration calls the operator's handler
on the path it serves, over TLS the chart's own CA vouches for, adds no RBAC, and keeps its certificates
across upgrades. That the API server really calls the handler: tests/operator/test_webhook_admission.py."""

from __future__ import annotations

import base64
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from delivery_support import CHART, run, tool

from rectrain_api import job as api
from rectrain_operator.webhook import WEBHOOK_PATH

NAMESPACE = "rectrain-system"
SECRET, SERVICE = "rel-rectrain-operator-webhook-tls", "rel-rectrain-operator-webhook"


def render(tmp_path: Path, values: dict | None = None, *extra: str) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values or {}))
    out = run([tool("helm"), "template", "rel", str(CHART), "--namespace", NAMESPACE, "-f", str(path), *extra]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_configuration_calls_the_handler_of_the_operator(tmp_path):
    docs = render(tmp_path)  # enabled by default
    hook = one(docs, "ValidatingWebhookConfiguration")["webhooks"][0]
    # kopf routes by path to the handler with that id; another path would admit everything unchecked.
    assert hook["clientConfig"]["service"] == {"name": SERVICE, "namespace": NAMESPACE, "path": WEBHOOK_PATH, "port": 443}
    assert hook["rules"] == [{"apiGroups": [api.GROUP], "apiVersions": [api.VERSION], "resources": [api.PLURAL],
                              "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == ("Ignore", "None", 5)
    assert "namespaceSelector" not in hook  # all namespaces, like the operator
    # The Service reaches the operator's webhook port, where --webhook-port serves.
    service = one(docs, "Service", SERVICE)
    deployment = one(docs, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    c = container(docs)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    # The operator serves the certificates the chart generated, mounted from the Secret.
    mount = next(m for m in c["volumeMounts"] if m["name"] == "webhook-tls")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == SECRET and mount["readOnly"] is True
    assert {"--webhook-port=9443", f"--webhook-cert={mount['mountPath']}/tls.crt",
            f"--webhook-key={mount['mountPath']}/tls.key"} <= set(c["args"])
    assert one(docs, "Secret", SECRET)["data"]["ca.crt"] == hook["clientConfig"]["caBundle"]


def test_certificate_is_valid_for_the_service_and_signed_by_the_ca_bundle(tmp_path):
    docs = render(tmp_path)
    data = {k: base64.b64decode(v) for k, v in one(docs, "Secret", SECRET)["data"].items()}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    ca_bundle = base64.b64decode(one(docs, "ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"])
    (tmp_path / "bundle.crt").write_bytes(ca_bundle)
    # The API server dials <service>.<namespace>.svc and checks the name against the SANs (Go ignores the CN).
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "bundle.crt"), "-verify_hostname",
                             f"{SERVICE}.{NAMESPACE}.svc", str(tmp_path / "tls.crt")], capture_output=True, text=True)
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    # The key belongs to the certificate: what kopf's server loads, the same way.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")


def test_webhook_adds_no_rbac_and_disabled_leaves_nothing(tmp_path):
    enabled, disabled = render(tmp_path), render(tmp_path, {"webhook": {"enabled": False}})
    rbac = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    assert [d for d in enabled if d["kind"] in rbac] == [d for d in disabled if d["kind"] in rbac]
    assert not [d for d in disabled if d["kind"] in ("ValidatingWebhookConfiguration", "Secret")]
    assert [d["metadata"]["name"] for d in disabled if d["kind"] == "Service"] == ["rel-rectrain-operator-metrics"]
    c = container(disabled)
    assert not any(a.startswith("--webhook") for a in c["args"])
    assert [p["name"] for p in c["ports"]] == ["metrics", "healthz"]
    assert [m["name"] for m in c["volumeMounts"]] == ["tmp"]


def test_namespace_selector_follows_watched_namespaces(tmp_path):
    values = {"watchNamespaces": ["team-a", "team-b"], "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 2}}
    hook = one(render(tmp_path, values, "--kube-version", "1.21.0"), "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]}
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 2)
    # 1.20 does not label namespaces with their name: a selector on it would match none.
    hook = one(render(tmp_path, values, "--kube-version", "1.20.2"), "ValidatingWebhookConfiguration")["webhooks"][0]
    assert "namespaceSelector" not in hook


def test_rendered_webhook_passes_kubernetes_validate_strict(tmp_path):
    values = {"watchNamespaces": ["team-a"], "webhook": {"failurePolicy": "Fail", "port": 10443}}
    docs = [d for d in render(tmp_path, values, "--kube-version", "1.25.0") if d["kind"] != "KopfPeering"]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.25.0", str(path)], check=False)
    assert result.returncode == 0 and "ERROR" not in result.stdout and "WARN" not in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("values,message", [
    ({"webhook": {"failurePolicy": "Never"}}, "webhook.failurePolicy must be one of the following"),
    ({"webhook": {"timeoutSeconds": 31}}, "webhook.timeoutSeconds: Must be less than or equal to 30"),
    ({"webhook": {"enable": True}}, "Additional property enable is not allowed"),
], ids=["failurePolicy", "timeoutSeconds", "typo"])
def test_schema_rejects_bad_webhook_values(tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run([tool("helm"), "template", "rel", str(CHART), "-f", str(path)], check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# ------------------------------------------------------------------------------------ on the cluster


@pytest.mark.cluster
def test_upgrade_keeps_the_certificates(kubeconfig, namespace, k8s_api, tmp_path):
    """The API server accepts the configuration; an upgrade reuses the Secret it finds instead of rendering new
    certificates (which would break TLS until the operator re-read them); uninstall removes the configuration.
    A nodeSelector nothing matches keeps the operator from running, peering off leaves no hook objects."""
    from kubernetes import client

    admission, core = client.AdmissionregistrationV1Api(k8s_api), client.CoreV1Api(k8s_api)
    release = f"wh{uuid.uuid4().hex[:5]}"
    config = f"{namespace}-{release}-rectrain-operator"
    args = ["-n", namespace, "--set-string", "nodeSelector.rectrain\\.io/nowhere=true", "--set", "peering.enabled=false"]
    run([tool("helm"), "install", release, str(CHART), *args], kubeconfig=kubeconfig)
    try:
        secret = core.read_namespaced_secret(f"{release}-rectrain-operator-webhook-tls", namespace).data
        hook = admission.read_validating_webhook_configuration(config).webhooks[0]
        assert hook.client_config.ca_bundle == secret["ca.crt"] and hook.timeout_seconds == 5

        run([tool("helm"), "upgrade", release, str(CHART), *args, "--set", "webhook.timeoutSeconds=7"], kubeconfig=kubeconfig)
        assert core.read_namespaced_secret(f"{release}-rectrain-operator-webhook-tls", namespace).data == secret
        hook = admission.read_validating_webhook_configuration(config).webhooks[0]
        assert hook.client_config.ca_bundle == secret["ca.crt"] and hook.timeout_seconds == 7
    finally:
        run([tool("helm"), "uninstall", release, "-n", namespace], kubeconfig=kubeconfig, check=False)
    with pytest.raises(client.ApiException) as gone:
        admission.read_validating_webhook_configuration(config)
    assert gone.value.status == 404
