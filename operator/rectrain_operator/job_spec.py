"""The job's spec as the lifecycle reads it: strictly, with everything wrong with it (an active
job), or leniently, for its TTL only (a finished job, whatever its spec says now)."""

from __future__ import annotations

from pydantic import ValidationError

from rectrain_api import job as api
from rectrain_api.errors import describe
from rectrain_api.validation import schema_messages

from rectrain_operator import builders
from rectrain_operator.job_observation import Observation


def parse_spec(obs: Observation) -> tuple[api.RecTrainJobSpec | None, list[str]]:
    """The typed spec and what is wrong with it (the schema's errors, then the cross-field rules, then
    a child the API server refused); a spec that cannot be read at all is None."""
    spec: api.RecTrainJobSpec | None
    try:
        spec = api.RecTrainJobSpec.model_validate(obs.spec)
        errors = builders.validate(spec, builders.JobRef(obs.name, obs.namespace, obs.uid))
    except ValidationError as exc:  # the messages every other validation path gives
        spec, errors = None, schema_messages(exc, "spec.")
    except Exception as exc:  # never crash on bad input
        spec, errors = None, [f"spec: {describe(exc)}"]
    if obs.rejected:
        errors = [*errors, obs.rejected]
    return spec, errors


def lenient_spec(obs: Observation) -> api.RecTrainJobSpec | None:
    """The spec of a finished job, for its TTL only: None when it no longer parses."""
    try:
        return api.RecTrainJobSpec.model_validate(obs.spec)
    except ValidationError:
        return None
