"""Converging one child to the builders' output: server-side apply only where the live object differs.

Level-based: every reconcile (owner change, child event, periodic resync) compares the live child
with what Shoal would apply and applies only on a difference, so a deleted child is recreated and a
hand edit of a field Shoal sets is reverted, while an unchanged child sees no write at all (its
resourceVersion stays). Fields Shoal does not set (other managers', server defaults) are ignored:
server-side apply leaves them to their owners.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
from decimal import Decimal
from typing import Any

from shoal.crds import Reason
from shoal.operator.context import NotReady
from shoal.operator.kube import KubeClient, KubeError, ResourceType, resource_of

APPLIED_HASH = "shoal.dev/applied-hash"
"""Hash of the manifest last applied: a field Shoal stopped setting differs in it, so the next
apply (which drops that field from Shoal's managed set) is not skipped."""
REJECTED_DELAY = 15.0
"""First retry after the API server refused a child; doubled per retry up to MAX_REJECTED_DELAY."""
MAX_REJECTED_DELAY = 300.0


class ChildRejected(NotReady):
    """The API server refused a read or write of a child (retried with backoff: the cause may be
    outside the spec, e.g. a quota, an admission webhook or missing RBAC)."""

    def __init__(self, kind: str, name: str, error: KubeError) -> None:
        super().__init__(Reason.CHILD_REJECTED, f"{kind} {name}: {error}", delay=REJECTED_DELAY)
        self.status = error.status


def backoff(delay: float, retry: int) -> float:
    """The delay before retry number ``retry`` (0-based): doubling, capped."""
    return min(delay * 2 ** min(retry, 16), MAX_REJECTED_DELAY)


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its own hash in the APPLIED_HASH annotation."""
    out = copy.deepcopy(manifest)
    out["metadata"].setdefault("annotations", {})[APPLIED_HASH] = manifest_hash(manifest)
    return out


def covers(live: Any, desired: Any, *, quantities: bool = False) -> bool:
    """Whether ``live`` has every field of ``desired`` with the same value (extra live fields, such
    as server defaults or other managers' fields, do not count; lists must match item by item).

    Under a ``resources`` key values compare as quantities: the API server stores ``cpu: 4`` as
    "4" and "0.5" as "500m", which is no difference to re-apply.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v, quantities=quantities or k == "resources") for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(covers(a, b, quantities=quantities) for a, b in zip(live, desired, strict=True))
        )
    if quantities and live != desired:
        return _quantity(live) is not None and _quantity(live) == _quantity(desired)
    return bool(live == desired)


_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")
_SCALE = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(10**3), "M": Decimal(10**6),
          "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10),
          "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60)}  # fmt: skip


def _quantity(value: Any) -> Decimal | None:
    """The amount of a Kubernetes quantity (4, "4", "500m", "1.5Gi", "1e3"), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    number, exponent, suffix = match.groups()
    return Decimal(number) * (Decimal(10) ** int(exponent) if exponent else _SCALE.get(suffix or "", Decimal(1)))


async def converge(kube: KubeClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """The live child after making it match ``manifest`` (no write when it already does).

    Raises ChildRejected when the API server refuses the read or the apply.
    """
    rt = resource_of(manifest)
    meta = manifest["metadata"]
    want = stamped(manifest)
    try:
        live = await kube.get(rt, meta.get("namespace") or "default", meta["name"])
        if live is not None and covers(live, want):
            return live
        return await kube.apply(want)
    except KubeError as exc:
        raise ChildRejected(manifest["kind"], meta["name"], exc) from None


async def converge_all(kube: KubeClient, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Converge every child (concurrently); a refused one does not stop the others.

    Raises the first ChildRejected once all were tried (any other error as it is).
    """
    results = await asyncio.gather(*(converge(kube, m) for m in manifests), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise next((e for e in errors if not isinstance(e, ChildRejected)), errors[0])
    return [r for r in results if not isinstance(r, BaseException)]


async def delete_child(kube: KubeClient, rt: ResourceType, namespace: str, name: str) -> bool:
    """Delete a child Shoal no longer wants; ChildRejected when the API server refuses."""
    try:
        return await kube.delete(rt, namespace, name)
    except KubeError as exc:
        raise ChildRejected(rt.kind, name, exc) from None
