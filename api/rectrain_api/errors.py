"""One-line descriptions of errors for status conditions, Events and logs.

Imported by the operator (an invalid spec, a child the typed Kubernetes client refused); pydantic only.
"""

from __future__ import annotations

from typing import Any


def describe(exc: BaseException, *, skip_argument: bool = False) -> str:
    """`loc: msg; loc: msg` for a pydantic ValidationError, else the exception's first line.

    skip_argument: the error comes from a `validate_call` function (the typed Kubernetes client
    checks its arguments that way): each loc starts with the argument's position, which means
    nothing to the reader of a message, so it is dropped.
    """
    errors = _validation_errors(exc)
    if errors:
        return "; ".join(_describe_one(error, skip_argument) for error in errors)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _validation_errors(exc: BaseException) -> list[dict[str, Any]]:
    """The error list of a pydantic ValidationError (duck-typed); [] for any other exception."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return []
    try:
        listed = errors()
    except Exception:  # an unrelated `errors` method with another signature
        return []
    return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def _describe_one(error: dict[str, Any], skip_argument: bool) -> str:
    loc = tuple(error.get("loc") or ())
    if skip_argument and loc and isinstance(loc[0], int):
        loc = loc[1:]
    path = ".".join(str(part) for part in loc)
    message = error.get("msg", "invalid")
    return f"{path}: {message}" if path else str(message)
