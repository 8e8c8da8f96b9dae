"""Level-based reconciliation: owners re-converged when a child changes and on a periodic resync.

A child event (a hand edit, a deletion) converges its owner at once; the resync converges every
known owner every ``interval`` seconds, which also covers events missed while the operator was
down or a watch was reconnecting. Converging an owner whose children already match writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from shoal.crds import GROUP
from shoal.operator.context import Ctx, NotReady, SpecRejected
from shoal.operator.kube import MODELPOOLS, ROUTERS, KubeError
from shoal.operator.pools import reconcile_pool
from shoal.operator.routers import reconcile_router

log = logging.getLogger(__name__)

OWNER_TYPES = {"ModelPool": MODELPOOLS, "Router": ROUTERS}


def shoal_owner(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the ModelPool or Router that controls ``child``, if any."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        ours = str(ref.get("apiVersion", "")).startswith(f"{GROUP}/") and ref.get("kind") in OWNER_TYPES
        if ref.get("controller") and ours:
            return str(ref["kind"]), str(ref["name"])
    return None


async def converge_owner(ctx: Ctx, kind: str, namespace: str, name: str, *, prune: bool) -> bool:
    """Reconcile one owner from a fresh read; False when it no longer exists or is being deleted.

    Raises SpecRejected / NotReady (already recorded in the owner's status) like the reconcilers.
    """
    body = await ctx.kube.get(OWNER_TYPES[kind], namespace, name)
    if body is None:
        ctx.forget_owner(kind, namespace, name)
        return False
    if body["metadata"].get("deletionTimestamp"):
        return False  # being deleted (e.g. foreground): recreating its children would fight the collector
    if kind == "ModelPool":
        await reconcile_pool(ctx, body, prune=prune)
    else:
        await reconcile_router(ctx, body)
    return True


async def resync_forever(ctx: Ctx, interval: float) -> None:
    """Every ``interval`` seconds converge every known owner, one at a time (until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        await resync_once(ctx)


async def resync_once(ctx: Ctx) -> None:
    for kind, namespace, name in ctx.owners():
        try:
            await converge_owner(ctx, kind, namespace, name, prune=True)
        except (SpecRejected, NotReady) as exc:
            log.debug("resync %s %s/%s: %s", kind, namespace, name, exc)
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("resync %s %s/%s failed: %s", kind, namespace, name, exc)
