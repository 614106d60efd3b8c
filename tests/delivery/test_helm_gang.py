"""The chart's rights on PodGroups (spec.scheduling.gang): granted only with gangScheduling.enabled,
cluster-wide or per watched namespace, and only the verbs operator/rectrain_operator/cluster.py uses."""

from __future__ import annotations

from test_helm_chart import CHART, by_kind, helm, render, rules_of, write_values

GANG_RULES = {("scheduling.volcano.sh", "podgroups"): {"get", "list", "create", "delete"},
              ("scheduling.x-k8s.io", "podgroups"): {"get", "list", "create", "delete"}}


def operator_roles(docs: list[dict]) -> list[dict]:
    return [r for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-crds")]


def test_podgroup_rights_only_when_enabled(tmp_path):
    default = operator_roles(render(tmp_path))
    assert default and not any(set(GANG_RULES) & set(rules_of(r)) for r in default)
    enabled = operator_roles(render(tmp_path, {"gangScheduling": {"enabled": True}}))
    assert enabled and all({k: rules_of(r).get(k) for k in GANG_RULES} == GANG_RULES for r in enabled)
    namespaced = operator_roles(render(tmp_path, {"gangScheduling": {"enabled": True}, "watchNamespaces": ["team-a", "team-b"]}))
    assert [r["kind"] for r in namespaced] == ["Role", "Role"]
    assert all({k: rules_of(r).get(k) for k in GANG_RULES} == GANG_RULES for r in namespaced)


def test_schema_rejects_a_bad_gang_value(tmp_path):
    result = helm("template", "rel", str(CHART), "-f", write_values(tmp_path, {"gangScheduling": {"enabled": "yes"}}), check=False)
    assert result.returncode != 0 and "gangScheduling.enabled: Invalid type" in result.stderr, result.stderr
