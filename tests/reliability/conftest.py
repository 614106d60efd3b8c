"""Reliability and security suite: every test here drives the real operator under the RBAC the Helm
chart grants it (a ServiceAccount token from the TokenRequest API, not the admin token), so the whole
suite doubles as proof that the chart's least-privilege rules are enough.

Fixtures:
    chart_rbac        (session) the chart's ServiceAccount, ClusterRoles and bindings applied, and a
                      kubeconfig authenticating as that ServiceAccount
    operator          overrides tests/conftest.py's: the same subprocess, under chart_rbac
    pods_can_run      skips a test that needs the local node agent when it cannot run pods
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from jobs_support import chart_rbac_applied, render_chart


class ChartRbac:
    def __init__(self, namespace: str, account: str, docs: list[dict], kubeconfig: Path):
        self.namespace, self.account, self.docs, self.kubeconfig = namespace, account, docs, kubeconfig

    def rules(self) -> list[dict]:
        return [rule for d in self.docs if d["kind"] in ("ClusterRole", "Role") for rule in d.get("rules") or []]


@pytest.fixture(scope="session")
def chart_rbac(k8s_api, kubeconfig, crd_installed, tmp_path_factory) -> ChartRbac:
    """The chart's RBAC objects (rendered by the real helm) applied to the cluster; a kubeconfig as its ServiceAccount."""
    from kubernetes import client

    release = f"rel-{uuid.uuid4().hex[:5]}"
    namespace = f"rectrain-reliability-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        with chart_rbac_applied(k8s_api, kubeconfig, render_chart(release, namespace), namespace,
                                tmp_path_factory.mktemp("chart-rbac") / "kubeconfig") as (docs, account, path):
            yield ChartRbac(namespace, account, docs, path)
    finally:
        core.delete_namespace(namespace)


@pytest.fixture
def operator(chart_rbac, namespace, crd_installed, tmp_path):
    """`rectrain-operator` watching the test's namespace as the chart's ServiceAccount; killed by PID afterwards."""
    from rtj_harness import Operator

    op = Operator(str(chart_rbac.kubeconfig), namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.kill()


@pytest.fixture
def pods_can_run(local_cluster):
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG") is None and os.geteuid() != 0:
        pytest.skip("the local node agent needs root to run pods")

