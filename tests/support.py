"""Small helpers shared by the test suites (importable as `support`; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the last error is reported on timeout
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def is_gone(read: Callable[[], object]) -> bool:
    """Whether the object `read` fetches is gone (the API answers 404). Any other API error counts as
    not gone yet, so a wait_for on it polls on through a passing API hiccup."""
    from kubernetes.client import ApiException

    try:
        read()
    except ApiException as exc:
        return exc.status == 404
    return False
