"""Helpers for tests that run real RecTrainJobs on the local node (shared by tests/e2e and
tests/reliability): a small trainer config, a job manifest, kubectl apply, a progress recorder and
a simulated spot reclaim through rectrain-local; the Helm chart rendered by the real helm, and real
ServiceAccount tokens (TokenRequest) with kubeconfigs and API clients for them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rectrain_api import job as api

TABLES = [1000] * 26


def trainer(rows: int, batch: int, *, checkpoint_every: int | None = None, data: dict | None = None) -> dict:
    section = {
        "model": {"embeddingDim": 16, "tableSizes": TABLES, "bottomMlp": [32, 16], "topMlp": [32, 16]},
        "data": data or {"source": "synthetic", "synthetic": {"rows": rows, "evalRows": 4000, "seed": 7}},
        "training": {"epochs": 1, "batchSize": batch, "precision": "bf16", "backend": "gloo", "device": "cpu",
                     "seed": 3, "optimizer": {"learningRate": 0.01}},
        "reporting": {"progressIntervalSeconds": 0.5, "metricsPort": 0, "logEverySteps": 50},
    }
    if checkpoint_every:
        section["checkpoint"] = {"directory": "/checkpoints/run", "everySteps": checkpoint_every, "keep": 2}
    return section


def job_manifest(name: str, trainer_section: dict, *, backoff_limit: int = 1, claim: str | None = None) -> dict:
    spec: dict = {
        "image": "ghcr.io/rectrain/rectrain-trainer:test",
        "replicas": 2,
        "resources": {"cpu": "500m", "memory": "1Gi"},
        "trainer": trainer_section,
        "runPolicy": {"backoffLimit": backoff_limit, "restartBackoff": {"initialSeconds": 0, "maxSeconds": 1}},
    }
    if claim:
        spec["pod"] = {
            "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}}],
            "volumeMounts": [{"name": "checkpoints", "mountPath": "/checkpoints"}],
        }
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}


def kubectl_apply(kubeconfig: str, namespace: str, *objects: dict) -> None:
    subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump_all(objects), text=True, check=True, capture_output=True,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


class ProgressRecorder(threading.Thread):
    """Samples status.progress.step (and the attempt) throughout the job's life."""

    def __init__(self, harness, name: str) -> None:
        super().__init__(daemon=True)
        self.harness, self.name = harness, name
        self.samples: list[tuple[int, int]] = []  # (attempt, step)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status = self.harness.status(self.name)
            except Exception:  # noqa: BLE001 - a blip while polling is not the test's subject
                status = {}
            step = (status.get("progress") or {}).get("step")
            if step is not None and (not self.samples or self.samples[-1] != (status.get("attempt", 0), step)):
                self.samples.append((status.get("attempt", 0), step))
            if status.get("phase") in ("Succeeded", "Failed"):
                return
            time.sleep(0.2)


def reclaim(local_cluster, namespace: str, pod: str, grace_period: int = 20) -> None:
    """A simulated spot reclaim of `pod` (DisruptionTarget + eviction; SIGTERM, grace, SIGKILL)."""
    result = subprocess.run(
        [sys.executable, "-m", "rectrain_local.cli", "--state-dir", str(local_cluster.state_dir),
         "reclaim", "-n", namespace, "--grace-period", str(grace_period), pod],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr


# ---- the Helm chart and ServiceAccount tokens ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "rectrain-operator"
HELM = Path(sys.executable).with_name("helm")
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def render_chart(release: str, namespace: str, *set_args: str) -> list[dict]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/rectrain-helm/cache", "HELM_CONFIG_HOME": "/tmp/rectrain-helm/config",
           "HELM_DATA_HOME": "/tmp/rectrain-helm/data"}
    args = [str(HELM), "template", release, str(CHART), "--namespace", namespace]
    for s in set_args:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def token_for(k8s_api, namespace: str, account: str, *, seconds: int = 4 * 3600, bound_pod: str | None = None) -> str:
    """A real ServiceAccount token from the TokenRequest API (the kind the node agent mounts in pods)."""
    from kubernetes import client

    spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    if bound_pod:
        pod = client.CoreV1Api(k8s_api).read_namespaced_pod(bound_pod, namespace)
        spec.bound_object_ref = client.V1BoundObjectReference(api_version="v1", kind="Pod", name=bound_pod, uid=pod.metadata.uid)
    rsp = client.CoreV1Api(k8s_api).create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(spec=spec))
    return rsp.status.token


def kubeconfig_with_token(admin_kubeconfig: str, token: str, path: Path) -> Path:
    """A copy of the admin kubeconfig's cluster entry, authenticating with `token` instead."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": "sa", "user": {"token": token}}],
              "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
              "current-context": "sa"}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@contextmanager
def chart_rbac_applied(k8s_api, admin_kubeconfig: str, docs: list[dict], namespace: str,
                       kubeconfig_path: Path) -> Iterator[tuple[list[dict], str, Path]]:
    """The chart's RBAC objects among `docs` created in `namespace`, and a kubeconfig as its
    ServiceAccount: (the RBAC docs, the account, the kubeconfig). The cluster-scoped objects are
    deleted afterwards; the namespaced ones go with the namespace."""
    from kubernetes import client, utils

    rbac_docs = [d for d in docs if d["kind"] in RBAC_KINDS]
    utils.create_from_yaml(k8s_api, yaml_objects=rbac_docs, namespace=namespace)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    try:
        account = next(d for d in rbac_docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        path = kubeconfig_with_token(admin_kubeconfig, token_for(k8s_api, namespace, account), kubeconfig_path)
        yield rbac_docs, account, path
    finally:
        for d in rbac_docs:
            if d["kind"] == "ClusterRole":
                rbac.delete_cluster_role(d["metadata"]["name"])
            elif d["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(d["metadata"]["name"])


def client_with_token(k8s_api, token: str):
    """A kubernetes ApiClient talking to the same API server as `k8s_api`, as `token`'s subject."""
    from kubernetes import client

    cfg = client.Configuration()
    src = k8s_api.configuration
    cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = src.host, src.ssl_ca_cert, src.verify_ssl
    if src.ssl_ca_cert is None and getattr(src, "ca_cert_data", None):
        cfg.ca_cert_data = src.ca_cert_data
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)
