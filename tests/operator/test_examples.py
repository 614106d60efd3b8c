"""The shipped example jobs are valid: schema (pydantic) and the operator's code-level checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rectrain_api.job import RecTrainJob
from rectrain_operator import builders

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*-job.yaml"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"gpu-job.yaml", "cpu-job.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    doc = yaml.safe_load(path.read_text())
    job = RecTrainJob.model_validate(doc)
    ref = builders.JobRef(doc["metadata"]["name"], "default", "uid")
    assert builders.validate(job.spec, ref) == []
    pods = builders.build_pods(job.spec, ref, attempt=0)
    assert len(pods) == job.spec.desired_replicas
