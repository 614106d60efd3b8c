"""One-line descriptions of errors for status conditions, Events and logs.

Imported by the operator (a spec it cannot read at all); pydantic only.
"""

from __future__ import annotations

from typing import Any


def describe(exc: BaseException) -> str:
    """`loc: msg; loc: msg` for a pydantic ValidationError, else the exception's first line."""
    errors = _validation_errors(exc)
    if errors:
        return "; ".join(_describe_one(error) for error in errors)
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


def _describe_one(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error.get("loc") or ())
    message = error.get("msg", "invalid")
    return f"{path}: {message}" if path else str(message)
