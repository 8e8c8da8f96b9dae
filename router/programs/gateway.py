"""The async side of program scheduling: the proxy's seam to the pure ``ProgramScheduler``.

It identifies a request's program, holds the call while the scheduler says wait, tells the
engines to drop pins (pause, release, lease expiry), feeds the scheduler each engine's
scraped capacity and each call's usage, re-reads the classes, and ticks the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry

from shoal.router.errors import RouterError, bad_request
from shoal.router.openai_request import ParsedRequest
from shoal.router.pool import PoolRuntime
from shoal.router.programs.classes import ClassSource
from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig
from shoal.router.programs.decisions import Admit, Decision, Pause, Prewarm, Reject, Terminate, Unpin, Wait
from shoal.router.programs.metrics import ProgramMetrics
from shoal.router.programs.response import ResponseObserver
from shoal.router.programs.scheduler import (
    ClassForbidden,
    ContextTooLong,
    ProgramNotFound,
    ProgramScheduler,
    UnknownClass,
)
from shoal.router.programs.state import EngineCapacity
from shoal.router.sandboxes.manager import sandbox_key
from shoal.router.tenancy import TENANT_HEADER
from shoal.router.tokenization import PromptDigest

log = logging.getLogger("shoal.router.programs")

CLASS_HEADER = "x-shoal-program-class"
PROGRAM_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,256}$")
"""Same rule as the engine's: ids travel in engine URLs and pins."""
_ROUTER_FIELDS = ("program_class", "program_retention_s")
"""Body fields the router consumes or sets itself; never a client's value upstream."""


@dataclass
class CallTicket:
    """One admitted program call: where it may go and what it adds to the upstream request."""

    call_id: str
    program_id: str
    tenant: str
    class_name: str
    priority: int
    """The class priority: the call's ``x-shoal-priority`` unless the caller's key sets its own."""
    engines: frozenset[str] | None
    """Engines the picker may choose from (None: any)."""
    retention_s: float
    observer: ResponseObserver = field(default_factory=ResponseObserver)
    engine: str | None = None
    """Where it was sent."""

    def upstream_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The request body with the program's fields as the engine expects them."""
        out = {k: v for k, v in body.items() if k not in _ROUTER_FIELDS}
        extra = out.get("extra_body")
        if isinstance(extra, dict):
            out["extra_body"] = {k: v for k, v in extra.items() if k not in (*_ROUTER_FIELDS, "program_id")}
        out["program_id"] = self.program_id
        out["program_retention_s"] = round(self.retention_s, 3)
        return out


class ProgramGateway:
    """Owns the ``ProgramScheduler`` and its timer; the proxy calls ``before_call`` /
    ``routed`` / ``after_call`` around each program call.

    ``sandboxes``: a ``SandboxManager`` (duck-typed, None by default) whose ``release`` is
    called when a program ends and ``prewarm`` when it nears the head of the queue.
    """

    def __init__(
        self,
        cfg: ProgramsConfig,
        *,
        pools: Mapping[str, PoolRuntime],
        client: httpx.AsyncClient,
        upstream_auth: Mapping[str, str],
        call_timeout_s: float,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.classes = ClassSource(cfg)
        self.scheduler = ProgramScheduler(cfg, self.classes.classes, clock, call_timeout_s=call_timeout_s)
        self.metrics = ProgramMetrics(self.scheduler, registry or CollectorRegistry())
        self.sandboxes: Any = None
        self._pools = pools
        self._client = client
        self._upstream_auth = dict(upstream_auth)
        self._clock = clock
        self._waiters: dict[str, asyncio.Future[Admit | Reject]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._next_reload = 0.0

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._reload_classes()
        self._timer = asyncio.create_task(self._run_timer(), name="programs-timer")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        for task in list(self._background):
            task.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()

    async def _run_timer(self) -> None:
        while True:
            try:
                now = self._clock()
                if now >= self._next_reload:
                    self._reload_classes()
                self._refresh_engines()
                self._apply(self.scheduler.tick())
                deadline = self.scheduler.next_deadline()
                delay = self.cfg.tick_s if deadline is None else min(self.cfg.tick_s, max(0.005, deadline - now))
            except Exception:  # the timer must outlive a bug in one round
                log.exception("program scheduler tick failed")
                delay = self.cfg.tick_s
            await asyncio.sleep(delay)

    def _reload_classes(self) -> None:
        self._next_reload = self._clock() + self.cfg.reload_interval_s
        if self.classes.poll():
            self.scheduler.set_classes(self.classes.classes)
            if self.sandboxes is not None and hasattr(self.sandboxes, "set_classes"):
                self.sandboxes.set_classes(self.classes.classes)

    def _refresh_engines(self) -> None:
        """Every pool's engines with the capacity of their latest scrape; up = healthy."""
        capacities: dict[str, EngineCapacity] = {}
        for pool in self._pools.values():
            for state in pool.endpoints:
                if state.kv_capacity is not None:
                    capacities[state.url] = replace(state.kv_capacity, up=state.breaker.available)
        if capacities != self.scheduler.engines():
            self._apply(self.scheduler.engines_changed(capacities))

    # the proxy's seam ----------------------------------------------------------------------------

    async def before_call(
        self, parsed: ParsedRequest, headers: Mapping[str, str], tenant: str, pool: PoolRuntime,
        digest: PromptDigest | None,
    ) -> CallTicket | None:
        """Admit (maybe after a wait) a program call; None for a request without a program id.

        Raises RouterError: 400 for a bad id, class or a prompt over the class's limit; 409
        when the program ends while the call waits."""
        program_id = parsed.program_id
        if program_id is None:
            return None
        if not PROGRAM_ID.match(program_id):
            raise bad_request("program_id must be 1-256 characters of [A-Za-z0-9._:/-]", "program_id")
        cls = self._class_of(parsed, headers, tenant)
        self._refresh_engines()
        candidates = [c.url for c in pool.endpoints.candidates() if c.healthy]
        try:
            decision, others = self.scheduler.call_started(
                program_id, tenant, cls,
                candidates=candidates,
                prompt_tokens=digest.num_tokens if digest else len(parsed.prompt_text()) // 4,
                block_hashes=digest.block_hashes if digest else (),
                block_size=pool.hasher.block_size,
                previous_tools=_previous_tools(parsed.body),
            )
        except ContextTooLong as exc:
            raise bad_request(str(exc), "messages") from None
        self._apply(others)
        admit = decision if isinstance(decision, Admit) else await self._wait(decision)
        return CallTicket(
            admit.call_id, program_id, tenant, cls.name, admit.priority, admit.engines, admit.retention_s
        )

    def routed(self, ticket: CallTicket, engine: str) -> None:
        """The picker chose ``engine`` for the call."""
        ticket.engine = engine
        self._apply(self.scheduler.call_routed(ticket.call_id, engine))

    def after_call(self, ticket: CallTicket) -> None:
        """The call ended: with the engine's usage it is a step, without it a failed call."""
        usage = ticket.observer.usage
        if usage is None:
            self._apply(self.scheduler.call_failed(ticket.call_id))
            return
        self._apply(self.scheduler.call_finished(
            ticket.call_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            tool_calls=ticket.observer.tools,
        ))

    # programs API and sandbox seam -------------------------------------------------------------

    def release(self, program_id: str, tenant: str) -> None:
        """Raises ProgramNotFound for an unknown id or another tenant's program."""
        self._apply(self.scheduler.release(program_id, tenant))

    def lookup(self, program_id: str, tenant: str) -> ProgramClassConfig | None:
        """The class config of the tenant's program; None when there is no such program
        (programs are created by their first LLM call, never by a tool call)."""
        program = self.scheduler.find(program_id, tenant)
        return program.cls if program is not None else None

    def tool_started(self, program_id: str, tenant: str, timeout_s: float) -> int | None:
        """A sandbox tool run began: the program stays leased while it runs (up to its timeout)."""
        with contextlib.suppress(ProgramNotFound):
            return self.scheduler.tool_started(program_id, tenant, timeout_s)
        return None

    def tool_finished(
        self, program_id: str, tool_name: str, duration_s: float | None, tenant: str, token: int | None = None
    ) -> None:
        """A sandbox tool run ended: its duration (None: it failed) feeds the retention statistics."""
        with contextlib.suppress(ProgramNotFound):
            self.scheduler.tool_finished(program_id, tenant, tool_name, duration_s, token)

    # internals ---------------------------------------------------------------------------------

    def _class_of(self, parsed: ParsedRequest, headers: Mapping[str, str], tenant: str) -> ProgramClassConfig:
        extra = parsed.body.get("extra_body")
        name: Any = headers.get(CLASS_HEADER) or parsed.body.get("program_class")
        if name is None and isinstance(extra, dict):
            name = extra.get("program_class")
        if name is not None and (not isinstance(name, str) or not name):
            raise bad_request("'program_class' must be a non-empty string", "program_class")
        try:
            return self.scheduler.resolve_class(name, parsed.model, tenant)
        except UnknownClass as exc:
            raise bad_request(str(exc), "program_class") from None
        except ClassForbidden as exc:
            raise RouterError(403, str(exc), "permission_error", "program_class_forbidden", "program_class") from None

    async def _wait(self, wait: Wait) -> Admit:
        fut: asyncio.Future[Admit | Reject] = asyncio.get_running_loop().create_future()
        self._waiters[wait.call_id] = fut
        try:
            # The aging bound admits every call by max_wait_s; the margin covers one timer round.
            async with asyncio.timeout(self.cfg.max_wait_s + 2 * self.cfg.tick_s + 1.0):
                result = await asyncio.shield(fut)
        except BaseException as exc:
            self._waiters.pop(wait.call_id, None)
            if fut.done() and not fut.cancelled() and isinstance(fut.result(), Admit):
                self._apply(self.scheduler.call_failed(wait.call_id))  # admitted as the client left
            else:
                self._apply(self.scheduler.cancel(wait.call_id))
            if isinstance(exc, TimeoutError):  # the timer is stuck: say so rather than hang
                raise RouterError(503, "the program's call was held past the aging bound", "server_error",
                                  "program_held") from None
            raise
        self._waiters.pop(wait.call_id, None)
        if isinstance(result, Reject):
            raise RouterError(409, f"program {wait.program_id!r} ended while the call waited ({result.reason})",
                              "invalid_request_error", "program_ended")
        return result

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Admit | Reject):
                fut = self._waiters.get(d.call_id)
                if fut is not None and not fut.done():
                    fut.set_result(d)
            elif isinstance(d, Pause | Unpin):
                self._spawn(self._drop_pin(d.engine, d.program_id, d.tenant))
            elif isinstance(d, Terminate):
                if d.engine is not None:
                    self._spawn(self._drop_pin(d.engine, d.program_id, d.tenant))
                if self.sandboxes is not None:
                    self._spawn(self.sandboxes.release(sandbox_key(d.tenant, d.program_id), d.reason))
            elif isinstance(d, Prewarm) and self.sandboxes is not None:
                program = self.scheduler.find(d.program_id, d.tenant)
                if program is not None and program.cls.sandbox is not None:
                    self._spawn(self.sandboxes.prewarm(sandbox_key(d.tenant, d.program_id), program.cls))
        self.metrics.observe()

    async def _drop_pin(self, engine: str, program_id: str, tenant: str) -> None:
        url = f"{engine}/v1/programs/{quote(program_id, safe='')}/release"
        try:
            resp = await self._client.post(url, headers={**self._upstream_auth, TENANT_HEADER: tenant})
            if resp.status_code >= 400:
                log.info("dropping the pin of program %s on %s: engine answered %d", program_id, engine,
                         resp.status_code)
        except httpx.HTTPError as exc:
            log.info("dropping the pin of program %s on %s failed: %s", program_id, engine, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _previous_tools(body: Mapping[str, Any]) -> list[str]:
    """Tool names of the last assistant turn in a chat body (what the gap since it measured)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            calls = message.get("tool_calls")
            names = [
                c["function"]["name"] for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)
                and isinstance(c["function"].get("name"), str)
            ] if isinstance(calls, list) else []
            return names
    return []
