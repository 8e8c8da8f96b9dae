"""Scale to zero and back: the operator side of ModelPools with ``autoscaling.minReplicas: 0``.

The routers hold requests for a pool with no ready engine and report, per pool, what they hold,
what is open upstream and how long the pool has been idle (``GET /shoal/demand``, see
router/cold_start.py). One operator-wide loop asks every router that serves such a pool and
writes the pool's scale subresource:

- at zero replicas, a request held or open at any router scales the pool to 1 (the HPA or KEDA
  takes over from there; neither moves a target at zero);
- above zero, when every router serving the pool answers and reports it idle for
  ``scaleToZeroAfterSeconds``, the pool scales to 0.

No answer is never read as "idle": a pool whose routers cannot be asked stays as it is. One loop
(not a kopf timer per pool) for the reason given in program_status.py: no finalizers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from shoal.crds import ConditionType, ModelPoolSpec, Reason, RouterSpec
from shoal.crds.modelpool import Autoscaling
from shoal.operator.builders.common import Owner, child_name
from shoal.operator.context import Ctx, try_spec
from shoal.operator.kube import MODELPOOLS, ROUTERS
from shoal.operator.program_status import _ready_replica_ips
from shoal.operator.router_classes import RouterAddress, RouterJsonGetter

log = logging.getLogger(__name__)

DEMAND_PATH = "/shoal/demand"
INTERVAL_ENV = "SHOAL_SCALE_FROM_ZERO_INTERVAL"
DEFAULT_INTERVAL_S = 2.0
"""How often routers are asked: the most a held request waits for the scale-up to start."""


@dataclass(frozen=True)
class Demand:
    """A pool's demand as one router (or all of them, merged) reports it."""

    waiting: int = 0
    inflight: int = 0
    idle_seconds: float = 0.0


class DemandUnavailable(Exception):
    """A router did not report its demand; the message says why (one line)."""


FetchDemand = Callable[[RouterAddress], Awaitable[dict[str, Demand]]]
"""Router -> pool name -> its demand there; raises DemandUnavailable."""


def parse_demand(payload: Any) -> dict[str, Demand]:
    """The router's ``{"pools": [{"pool", "waiting", "inflight", "idle_seconds", ...}]}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("pools"), list):
        raise DemandUnavailable("the router's answer has no 'pools' list")
    out: dict[str, Demand] = {}
    for entry in payload["pools"]:
        try:
            name, waiting, inflight, idle = entry["pool"], entry["waiting"], entry["inflight"], entry["idle_seconds"]
        except (TypeError, KeyError) as exc:
            raise DemandUnavailable(f"a pool entry without {exc}: {entry!r}"[:200]) from None
        numbers = (waiting, inflight, idle)
        if not isinstance(name, str) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers):
            raise DemandUnavailable(f"a malformed pool entry: {entry!r}"[:200])
        out[name] = Demand(int(waiting), int(inflight), float(idle))
    return out


def merge(demands: Iterable[Demand]) -> Demand:
    """Several routers' (or replicas') view of one pool: counts add up, the shortest idle time wins."""
    items = list(demands)
    return Demand(
        sum(d.waiting for d in items), sum(d.inflight for d in items), min((d.idle_seconds for d in items), default=0.0)
    )


def decide(replicas: int, autoscaling: Autoscaling, demand: Demand | None, complete: bool) -> int | None:
    """The pool's new ``spec.replicas``, or None to leave it (pure).

    ``demand`` merges the routers that answered (None: none did); ``complete``: all of them did.
    """
    if autoscaling.min_replicas != 0 or demand is None:
        return None
    busy = demand.waiting > 0 or demand.inflight > 0
    if replicas == 0:
        return 1 if busy else None
    if complete and not busy and demand.idle_seconds >= autoscaling.idle_seconds:
        return 0
    return None


def scaled_to_zero(pool_body: dict[str, Any] | None) -> bool:
    """The pool is at zero replicas on purpose (its Ready condition says ScaledToZero)."""
    for cond in ((pool_body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ConditionType.READY:
            return bool(cond.get("reason") == Reason.SCALED_TO_ZERO)
    return False


class HttpDemandFetcher(RouterJsonGetter):
    """GET ``/shoal/demand`` from a router (no key: counts only), as the classes fetcher reaches it."""

    path = DEMAND_PATH

    def __init__(self, timeout_s: float = 2.0) -> None:
        super().__init__(timeout_s=timeout_s)

    async def __call__(self, router: RouterAddress) -> dict[str, Demand]:
        return parse_demand(await self.get_json(router, DemandUnavailable, authorize=False))


async def _router_demand(ctx: Ctx, fetch: FetchDemand, body: dict[str, Any], spec: RouterSpec) -> dict[str, Demand]:
    """One router's demand per pool; with several replicas, each ready one is asked (each holds its own)."""
    owner = Owner.of(body)
    address = RouterAddress(owner.namespace, owner.name, child_name(owner), spec.service.port)
    ips = await _ready_replica_ips(ctx, owner) if spec.replicas > 1 else []
    if not ips:
        return await fetch(address)
    answers = await asyncio.gather(*(fetch(replace(address, pod_ip=ip)) for ip in ips))
    pools = {name for answer in answers for name in answer}
    return {name: merge(a[name] for a in answers if name in a) for name in pools}


async def scale(ctx: Ctx, body: dict[str, Any], replicas: int, why: str) -> None:
    """Write the pool's scale subresource and record an Event."""
    meta = body["metadata"]
    await ctx.kube.patch_scale(MODELPOOLS, meta.get("namespace") or "default", meta["name"], replicas)
    reason = "ScaledFromZero" if replicas else "ScaledToZero"
    log.info("ModelPool %s/%s: %s (%s)", meta.get("namespace"), meta["name"], reason, why)
    await ctx.kube.event(body, "Normal", reason, why)


async def scale_namespace(ctx: Ctx, namespace: str, fetch: FetchDemand) -> None:
    """One round in one namespace: every minReplicas-0 pool against its routers' demand."""
    pools = {}
    for body in await ctx.kube.list(MODELPOOLS, namespace):
        spec = try_spec(ModelPoolSpec, body)
        if spec is not None and spec.autoscaling is not None and spec.autoscaling.min_replicas == 0:
            pools[body["metadata"]["name"]] = (body, spec)
    if not pools:
        return
    answers: dict[str, list[Demand]] = {name: [] for name in pools}
    missing: dict[str, list[str]] = {name: [] for name in pools}
    for router in await ctx.kube.list(ROUTERS, namespace):
        rspec = try_spec(RouterSpec, router)
        served = [p.name for p in rspec.pools if p.name in pools] if rspec is not None else []
        if rspec is None or not served:
            continue
        try:
            report = await _router_demand(ctx, fetch, router, rspec)
        except DemandUnavailable as exc:
            log.info("router %s/%s: demand unknown: %s", namespace, router["metadata"]["name"], exc)
            report = {}
        for name in served:
            if name in report:
                answers[name].append(report[name])
            else:
                missing[name].append(router["metadata"]["name"])
    for name, (body, spec) in pools.items():
        assert spec.autoscaling is not None
        demand = merge(answers[name]) if answers[name] else None
        target = decide(spec.replicas, spec.autoscaling, demand, complete=not missing[name])
        if target is None or demand is None:
            continue
        why = (
            f"{demand.waiting} request(s) held and {demand.inflight} open at its routers"
            if target
            else f"no request through its routers for {demand.idle_seconds:.0f}s "
            f"(scaleToZeroAfterSeconds {spec.autoscaling.idle_seconds})"
        )
        await scale(ctx, body, target, why)


async def scale_round(ctx: Ctx, fetch: FetchDemand) -> None:
    """One round over every namespace the operator has seen a ModelPool in."""
    for namespace in sorted({ns for kind, ns, _ in ctx.owners() if kind == "ModelPool"}):
        await scale_namespace(ctx, namespace, fetch)


async def scale_forever(ctx: Ctx, fetch: FetchDemand, interval_s: float) -> None:
    """Run a round every ``interval_s`` until cancelled; a failed round is logged and retried."""
    while True:
        try:
            await scale_round(ctx, fetch)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive any one API error
            log.exception("scale-to-zero round failed; retrying in %.1fs", interval_s)
        await asyncio.sleep(interval_s)
