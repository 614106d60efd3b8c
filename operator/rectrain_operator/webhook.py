"""The validating admission webhook: `kubectl apply` refuses a RecTrainJob that the operator would fail
as InvalidSpec, at once, with the same "<field path>: <what is wrong>" messages.

It runs the one set of rules (rectrain_api.validation.check_spec) and adds none: the CRD schema
checks each field, this checks how fields relate (fp16 on a CPU job, a volume mount with no volume).
The operator still checks every spec it reconciles, so a job that reaches the API server while the
webhook is off, down or ignored ends Failed/InvalidSpec as before.

Off unless `rectrain-operator --webhook-port` is given (main.py). The ValidatingWebhookConfiguration
is not managed by kopf (that would need cluster-wide write rights on webhook configurations): the
chart installs it, or whoever runs the operator creates it; its path must be WEBHOOK_PATH.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from rectrain_api import job as api
from rectrain_api.errors import describe
from rectrain_api.validation import check_spec, schema_messages

log = logging.getLogger("rectrain.webhook")

HANDLER_ID = "validate-rectrainjob"
# kopf's webhook server routes a request to the handler whose id is the URL path; any other path
# would run no handler at all and admit everything.
WEBHOOK_PATH = f"/{HANDLER_ID}"
DENIED_CODE = 422  # Unprocessable Entity: what the API server answers for a schema violation too


def spec_errors(body: Mapping[str, Any]) -> list[str]:
    """Every message the operator would fail this job with, from the raw object (empty: valid).
    Never raises: an object that cannot be read at all gets a message too."""
    try:
        spec = api.RecTrainJobSpec.model_validate(body.get("spec", {}))
        meta = body.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        return check_spec(spec, name if isinstance(name, str) and name else None)
    except ValidationError as exc:  # what the schema let through (or a request that skipped it)
        return schema_messages(exc, "spec.")
    except Exception as exc:  # never a 500 for bad input
        return [f"spec: cannot be read: {describe(exc)}"]


def admission_errors(operation: str | None, body: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[str]:
    """Why this CREATE or UPDATE is refused (empty: admitted). An UPDATE that leaves the spec as it was
    is admitted whatever the spec says: a job created before the webhook existed can still be
    labelled or annotated, and the operator has already reported it InvalidSpec."""
    if operation == "UPDATE" and old is not None and _spec_of(old) == _spec_of(body):
        return []
    return spec_errors(body)


def _spec_of(body: Mapping[str, Any]) -> Any:
    return body.get("spec")


def webhook_server(port: int, address: str, certfile: str, keyfile: str) -> kopf.WebhookServer:
    """HTTPS on address:port with the given serving certificate. kopf re-reads the files every minute
    and restarts the server when they change (a renewed Secret needs no operator restart)."""
    return kopf.WebhookServer(addr=address, port=port, certfile=certfile, pkeyfile=keyfile)


class _RefusalIsNoError(logging.Filter):
    """kopf logs each refusal as an ERROR of the handler ("Webhook '...' failed permanently"). A user's
    bad spec is no fault of the operator's, and validate_job logs each refusal itself, once, at INFO."""

    PREFIX = f"Webhook {HANDLER_ID!r} failed permanently:"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIX)


def register_webhook(registry: kopf.OperatorRegistry) -> None:
    """Register the handler; only with an admission server configured (kopf refuses to start with
    admission handlers and no server)."""
    logging.getLogger("kopf.objects").addFilter(_RefusalIsNoError())

    @kopf.on.validate(api.GROUP, api.VERSION, api.PLURAL, id=HANDLER_ID, operations=["CREATE", "UPDATE"],
                      registry=registry)
    def validate_job(operation: str | None, body: kopf.Body, old: kopf.Body | None, **_: Any) -> None:
        try:
            errors = admission_errors(operation, body, old)
        except Exception as exc:  # a bug here must not turn every apply into a 500
            errors = [f"spec: cannot be checked: {describe(exc)}"]
        if errors:
            message = "; ".join(errors)  # as the operator's InvalidSpec condition joins them
            log.info("refused %s of %s: %s", operation, _where(body), message)
            raise kopf.AdmissionError(message, code=DENIED_CODE)


def _where(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return "<no metadata>"
    return f"{meta.get('namespace')}/{meta.get('name')}"
