"""Kubernetes resource quantities ("500m", "1.5", "16Gi", "1e3"): the schema pattern and a parser.

The pattern is a subset of what the API server accepts (no signs, no "n"/"u" suffixes, which a pod's
cpu or memory never needs), so a value that passes it is also a valid quantity for the Pod API.
"""

from __future__ import annotations

import re
from decimal import Decimal

# Used both as the CRD/pydantic `pattern` (Go RE2 and Rust regex: no lookarounds) and by parse_quantity.
QUANTITY_PATTERN = r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$"

_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(text: str) -> Decimal | None:
    """The quantity's value (cpu in cores, memory in bytes), or None when it is not one."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        return None
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix.startswith("e"):
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * _SUFFIX[suffix]
