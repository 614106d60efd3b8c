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
    assert {"fp32", "bf16", "fp16"} <= set(spec["properties"]["trainer"]["properties"]["training"]["properties"]["precision"]["enum"])
    # Optional (X | None) fields keep their type and are not `nullable`: the API server's OpenAPI v2 for
    # kubectl drops the type and fields of nullable ones; a null given for them is pruned (means unset).
    assert spec["properties"]["procsPerReplica"]["type"] == "integer"
    assert "nullable" not in crd.render()
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
    assert names == ["Phase", "Ready", "Progress%", "Step", "Loss", "AUC", "Restarts", "Preemptions", "Age", "Size", "Desired", "Resizes",
                     "Reason", "Message"]
    wide = ["Size", "Desired", "Resizes", "Reason", "Message"]
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")] == wide, "-o wide only"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".status."):
            assert column["jsonPath"].split(".")[2] in status, column


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


def _spec_schema():
    return yaml.safe_load(crd.render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_descriptions_state_allowed_values_and_defaults():
    """kubectl explain shows what a field accepts and what it is when left out, read from the schema."""
    spec = _spec_schema()
    training = spec["properties"]["trainer"]["properties"]["training"]["properties"]
    assert training["batchSize"]["description"].endswith("is set. At least 1. Default: 2048.")
    precision = training["precision"]
    assert precision["description"].endswith(f". One of: {', '.join(precision['enum'])}. Default: fp32.")
    assert spec["properties"]["replicas"]["description"].endswith("one gang. From 1 to 1024. Default: 1.")
    assert "Greater than 0. Default: 0.01." in training["optimizer"]["properties"]["learningRate"]["description"]
    model = spec["properties"]["trainer"]["properties"]["model"]["properties"]
    # A default_factory default is documented, but not a schema default (the API server does not store it).
    assert model["tableSizes"]["description"].endswith("At least 1 item, each at least 1. Default: 26 items of 100000.")
    assert "default" not in model["tableSizes"] and model["bottomMlp"]["description"].endswith("Default: [64, 16].")
    assert spec["properties"]["spot"]["properties"]["enabled"]["description"].endswith("Default: false.")
    # Every enum and every default is stated, everywhere in the spec.
    for path, node in _walk(spec):
        text = node.get("description", "")
        if "enum" in node:
            assert "One of: " + ", ".join(map(str, node["enum"])).replace("True", "true") in text, path
        if "default" in node and node["default"] != {}:
            assert "Default: " in text, path


def test_generator_refuses_an_undocumented_field(monkeypatch):
    """A field added without a description (or with a placeholder) stops `rectrain-crd`, naming it."""
    from pydantic import Field

    class Undocumented(job.RecTrainJobSpec):
        """A spec with two badly documented fields."""

        extraKnob: int = 0
        vague: int = Field(0, description="vague")

    monkeypatch.setattr(job, "RecTrainJobSpec", Undocumented)
    with pytest.raises(crd.SchemaError, match=r"spec\.extraKnob, spec\.vague"):
        crd.build_crd()
    assert crd.missing_descriptions({"properties": {"a": {"description": "a (x.a); see its fields."}}}) == [".a"]


def test_trainer_reference_is_current_and_keeps_prose(tmp_path):
    from rectrain_api import reference

    path = reference.default_path()
    assert path.read_text() == reference.render(path.read_text()), "docs/trainer.md is stale: run `rectrain-crd`"
    text = path.read_text()
    assert "| `maxSteps` | integer | unset | at least 1 | Stop after this many global steps" in text
    assert "| `batchSize` | integer | `2048` | at least 1 |" in text
    assert "[object](#spectrainertrainingoptimizer)" in text and "### `spec.trainer.training.optimizer`" in text
    # Hand-written text around the generated part survives a regeneration; a stale part is replaced.
    stale = f"# Mine\n\nprose before\n{reference.BEGIN}\nold table\n{reference.END}\nprose after\n"
    fresh = reference.render(stale)
    assert fresh.startswith("# Mine\n\nprose before\n") and fresh.endswith(f"{reference.END}\nprose after\n")
    assert "old table" not in fresh and "| `maxSteps` |" in fresh
    docs = tmp_path / "trainer.md"
    docs.write_text(stale)
    assert crd.main(["--check", "--docs", str(docs)]) == 1
