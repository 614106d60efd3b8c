"""Fixtures every suite shares: a real Kubernetes API to test against, and a namespace per test.

By default the session starts its own local control plane (rectrain-local) in a temporary state
directory and stops it at the end. Set RECTRAIN_TEST_KUBECONFIG to run the same suite against an
existing cluster instead (kind, k3d, a real one, or `make cluster`).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for

KUBECONFIG_ENV = "RECTRAIN_TEST_KUBECONFIG"


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The local control plane this session started, or None when RECTRAIN_TEST_KUBECONFIG names a cluster."""
    if os.environ.get(KUBECONFIG_ENV):
        yield None
        return
    from rectrain_local.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("rectrain-cluster"))
    cluster.up(fresh=True)
    try:
        yield cluster
    finally:
        cluster.down(quiet=True)


@pytest.fixture(scope="session")
def kubeconfig(local_cluster) -> str:
    """Path of a kubeconfig with cluster-admin rights on the cluster under test."""
    existing = os.environ.get(KUBECONFIG_ENV)
    if existing:
        if not Path(existing).is_file():
            pytest.fail(f"{KUBECONFIG_ENV}={existing}: no such file")
        return existing
    return str(local_cluster.kubeconfig)


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str):
    """A kubernetes.client.ApiClient for the cluster under test."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_api) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (with everything in it) afterwards."""
    from kubernetes import client

    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"rectrain.io/test": "true"})))
    # Until the controller-manager has issued the default ServiceAccount's token, 1.20 refuses pods.
    wait_for(lambda: core.read_namespaced_service_account("default", name).secrets, what=f"namespace {name} to get its default token")
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:
                raise


# ---- RecTrainJob fixtures, shared by the operator, e2e and delivery suites --------------------------


@pytest.fixture(scope="session")
def crd_installed(k8s_api):
    """The RecTrainJob CRD, generated from the API types, installed and served."""
    from rtj_harness import install_crd

    install_crd(k8s_api)


@pytest.fixture
def harness(k8s_api, namespace, crd_installed):
    """Jobs and pods in the test's namespace (tests/operator/rtj_harness.py)."""
    from rtj_harness import Harness

    return Harness(k8s_api, namespace)


@pytest.fixture
def operator(kubeconfig, namespace, crd_installed, tmp_path):
    """`rectrain-operator` as a subprocess watching the test's namespace; killed by PID afterwards."""
    from rtj_harness import Operator

    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.kill()
