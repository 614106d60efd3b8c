"""End-to-end fixtures: the real operator and the local node agent, so rank pods really train."""

from __future__ import annotations

import os

import pytest
from rtj_harness import Harness, Operator, install_crd


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_crd(k8s_api):
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG") is None and os.geteuid() != 0:
        pytest.skip("the local node agent needs root to run pods")
    install_crd(k8s_api)


@pytest.fixture
def e2e(k8s_api, namespace, e2e_crd) -> Harness:
    return Harness(k8s_api, namespace)


@pytest.fixture
def live_operator(kubeconfig, namespace, e2e_crd, tmp_path):
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.kill()
