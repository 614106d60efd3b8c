"""End-to-end: the real operator (`operator` fixture) and the local node agent, so rank pods really
train. Pods only run where a node runs them: the local node agent needs root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def pods_can_run():
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG") is None and os.geteuid() != 0:
        pytest.skip("the local node agent needs root to run pods")
