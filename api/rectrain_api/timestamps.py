"""RFC 3339 timestamps as the Kubernetes API writes them (status times, Event times).

Standard library only: shared by the operator's lifecycle and cluster layer (and open to the trainer
and the kubectl plugin, which still format their own).
"""

from __future__ import annotations

from datetime import datetime, timezone


def fmt_time(t: datetime) -> str:
    """Second precision in UTC, `2026-01-01T00:00:00Z` (metav1.Time's wire format)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API (second precision or finer); None when absent or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
