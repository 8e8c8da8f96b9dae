"""Kubernetes resource quantities ("512Mi", "1G", "1.5Gi", 1073741824) as whole numbers of bytes."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""Any Kubernetes quantity (cpu "500m", memory "2Gi", "1e3"): the pattern the API server's own
Quantity type has, written into the CRDs so ``kubectl apply`` refuses ``memory: lots``."""
QUANTITY_MAX_LENGTH = 64
"""Longest quantity string (also bounds the cost of the CRDs' CEL rules that read quantities)."""
_ANY_QUANTITY = re.compile(QUANTITY_PATTERN)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def check_quantity(value: int | str) -> int | str:
    """``value`` when it is a Kubernetes quantity; ValueError otherwise."""
    if isinstance(value, str) and (len(value) > QUANTITY_MAX_LENGTH or _ANY_QUANTITY.fullmatch(value) is None):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 2Gi, 1G)")
    return value


def quantity_bytes(value: int | str) -> int:
    """Bytes of a memory or storage quantity, rounded up; ValueError names what is wrong.

    Milli-units ("500m") and negative values are not byte counts and are refused.
    """
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None or (match.group(2) is not None and match.group(3)):
        raise ValueError(f"{value!r} is not a byte quantity (e.g. 512Mi, 2Gi, 1G, 1073741824)")
    number, exponent, suffix = match.group(1), match.group(2), match.group(3) or ""
    try:
        amount = Decimal(number) * (Decimal(10) ** int(exponent or 0)) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError):
        raise ValueError(f"{value!r} is not a byte quantity (e.g. 512Mi, 2Gi, 1G, 1073741824)") from None
    return math.ceil(amount)
