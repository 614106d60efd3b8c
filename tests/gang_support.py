"""The PodGroup CRDs vendored in tests/fixtures/crds, installed into the cluster under test."""

from __future__ import annotations

from pathlib import Path

import yaml
from support import wait_for

CRDS = Path(__file__).resolve().parent / "fixtures" / "crds"
VOLCANO_CRD = "volcano-podgroups.yaml"
COSCHEDULING_CRD = "coscheduling-podgroups.yaml"


def install_crd_file(k8s_api, file: str) -> dict:
    """Create a vendored CRD (if missing) and wait until its API is served; its manifest."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(k8s_api)
    body = yaml.safe_load((CRDS / file).read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    group, version, plural = body["spec"]["group"], body["spec"]["versions"][0]["name"], body["spec"]["names"]["plural"]
    custom = client.CustomObjectsApi(k8s_api)

    def served() -> bool:
        try:
            custom.list_cluster_custom_object(group, version, plural)
            return True
        except ApiException:
            return False

    wait_for(served, timeout=30, what=f"{body['metadata']['name']} served")
    return body
