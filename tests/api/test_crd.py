"""The committed CRD is the generator's output, structural, and documents every field."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rectrain_api import crd, job


def test_committed_crd_matches_generator():
    path = crd.default_path()
    assert path.exists(), "run `rectrain-crd`"
    assert path.read_text() == crd.render(), "crds/ is stale: run `rectrain-crd` and commit"


def test_check_mode_fails_on_difference(tmp_path):
    stale = tmp_path / "crd.yaml"
    stale.write_text("stale\n")
    assert crd.main(["--check", "--output", str(stale)]) == 1
    assert crd.main(["--output", str(stale)]) == 0
    assert crd.main(["--check", "--output", str(stale)]) == 0


def _walk(schema, path="$"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_documented():
    doc = yaml.safe_load(crd.render())
    version = doc["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "type" in node, path
        for bad in ("anyOf", "oneOf", "allOf", "$ref", "title", "const"):
            assert bad not in node, f"{path}: {bad}"
        assert not ("properties" in node and "additionalProperties" in node), path
        if path.count(".") >= 1 and path != "$.metadata" and not path.endswith("[]") and not path.endswith("}"):
            assert node.get("description"), f"{path} has no description"
    assert crd.missing_descriptions(root) == [".metadata"]  # the API server forbids describing metadata
    spec = root["properties"]["spec"]
    assert spec["required"] == ["image"]
    assert spec["properties"]["replicas"]["minimum"] == 1
    assert spec["properties"]["spot"]["properties"]["provider"]["enum"] == ["gke", "eks", "aks", "generic"]
    assert spec["properties"]["trainer"]["properties"]["training"]["properties"]["precision"]["enum"] == ["fp32", "bf16", "fp16"]
    assert spec["properties"]["procsPerReplica"]["nullable"] is True
    # Trainer-owned status fields are in the schema so the status subresource keeps them.
    status = root["properties"]["status"]
    assert {"progress", "metrics", "phase", "conditions", "restarts", "preemptions"} <= set(status["properties"])
    assert "default" not in str(status)


def test_crd_names_columns_and_subresource():
    doc = yaml.safe_load(crd.render())
    assert doc["metadata"]["name"] == "rectrainjobs.rectrain.io"
    assert doc["spec"]["names"]["shortNames"] == ["rtj"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Phase", "Ready", "Progress%", "Step", "Loss", "AUC", "Restarts", "Preemptions", "Age", "Size", "Desired", "Resizes"]
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")] == ["Size", "Desired", "Resizes"], "-o wide only"


def test_defaults_round_trip_through_pydantic():
    """Every schema default is what pydantic would use (the API server and the operator agree)."""
    spec = job.RecTrainJobSpec.model_validate({"image": "x"})
    assert spec.replicas == 1 and spec.runPolicy.backoffLimit == 3 and spec.masterPort == 29500
    assert spec.procs == 1 and spec.world_size == 1
    with pytest.raises(Exception):
        job.RecTrainJobSpec.model_validate({"image": "x", "replica": 2})


def test_api_imports_only_pydantic():
    code = (
        "import sys, rectrain_api.job, rectrain_api.crd, rectrain_api.validation;"
        "bad=[m for m in ('kopf','kubernetes','torch','rectrain_operator') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_field_rules_are_in_the_schema():
    """What a schema can say is said there, so the API server refuses it at apply time too."""
    from rectrain_api.quantity import QUANTITY_PATTERN

    spec = yaml.safe_load(crd.render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model = spec["properties"]["trainer"]["properties"]["model"]["properties"]
    for field in ("tableSizes", "bottomMlp", "topMlp"):
        assert model[field]["items"]["minimum"] == 1, field
    for field in ("cpu", "memory", "cpuLimit", "memoryLimit", "shmSize"):
        assert spec["properties"]["resources"]["properties"][field]["pattern"] == QUANTITY_PATTERN, field
