"""Fixtures for operator tests on the real local control plane."""

from __future__ import annotations

import pytest

from rtj_harness import Harness, Operator, install_crd


@pytest.fixture(scope="session")
def crd_installed(k8s_api):
    install_crd(k8s_api)


@pytest.fixture
def harness(k8s_api, namespace, crd_installed) -> Harness:
    return Harness(k8s_api, namespace)


@pytest.fixture
def operator(kubeconfig, namespace, crd_installed, tmp_path):
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.kill()
