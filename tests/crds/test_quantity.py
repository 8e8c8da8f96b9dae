"""Byte quantities of sandbox resources, read as Kubernetes reads them."""

from __future__ import annotations

import pytest

from shoal.crds.quantity import quantity_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [("512Mi", 512 << 20), ("1Gi", 1 << 30), ("512Ki", 512 << 10), ("1G", 10**9), ("100k", 100_000),
     ("1.5Gi", 3 << 29), (1073741824, 1 << 30), ("1e9", 10**9), ("0.5Ki", 512), ("1.0001k", 1001)],
)  # fmt: skip
def test_quantities(value: int | str, expected: int) -> None:
    assert quantity_bytes(value) == expected


@pytest.mark.parametrize("value", ["500m", "-1Gi", "1KB", "1K", "Gi", "1e3Mi", "", "1 Gi", "lots"])
def test_not_byte_quantities(value: str) -> None:
    with pytest.raises(ValueError, match="not a byte quantity"):
        quantity_bytes(value)
