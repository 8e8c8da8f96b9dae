"""The engine loop in its own thread, driven from asyncio.

The engine is synchronous and single-threaded, so one dedicated thread owns it:
it drains a thread-safe inbox (adds, aborts, calls) between steps, runs
``step()`` while there is work, and hands each step's outputs to the event loop
in ONE ``call_soon_threadsafe`` (one wake-up per step, not per token). The event
loop never touches the engine, so it never waits on model compute.

A step that raises fails only the requests it held (each stream ends with a
:class:`RequestFailedError`, a 500 ``server_error``; their blocks are freed) and
the loop goes on; only a failure of the loop's own machinery stops the engine.

Each request gets a :class:`RequestStream`. Outputs are cumulative, so a stream
keeps only the latest state per completion index: a slow reader gets bigger
deltas instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.engine.errors import StepFailedError
from shoal.engine.outputs import CompletionOutput, RequestOutput
from shoal.engine.server.errors import RequestFailedError
from shoal.engine.server.request_observer import RequestObserver

if TYPE_CHECKING:  # the server drives an LLMEngine (tests: a fake with the same methods)
    from shoal.engine.llm_engine import LLMEngine

logger = logging.getLogger("shoal.engine.server")
T = TypeVar("T")
MAX_CONSECUTIVE_STEP_FAILURES = 8
"""Steps failing in a row, none succeeding in between, mean the engine itself is broken (e.g. a
lost GPU context), not one bad request: the engine is then declared dead (/health 503)."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped (its own machinery failed, or the server is shutting down)."""


@dataclass(frozen=True)
class StreamUpdate:
    """The latest cumulative state of one engine request."""

    outputs: tuple[CompletionOutput, ...]
    """One per completion index, sorted by index."""
    finished: bool
    num_cached_tokens: int


class RequestStream:
    """Outputs of one engine request on the asyncio side (async-iterate it)."""

    def __init__(self, request_id: str, arrival: float, observer: RequestObserver | None) -> None:
        self.request_id = request_id
        self.arrival = arrival
        self._observer = observer
        self._latest: dict[int, CompletionOutput] = {}
        self._num_cached = 0
        self._finished = False
        self._error: BaseException | None = None
        self._event = asyncio.Event()
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._num_tokens = 0

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def started(self) -> bool:
        return self._first_token_at is not None

    def _push(self, out: RequestOutput, now: float) -> None:
        for completion in out.outputs:
            self._latest[completion.index] = completion
        self._num_cached = out.num_cached_tokens
        num_tokens = sum(len(c.token_ids) for c in self._latest.values())
        if num_tokens > self._num_tokens:
            if self._first_token_at is None:
                self._first_token_at = now
                if self._observer:
                    # Same monotonic clock as the engine's own timestamps.
                    scheduled = out.metrics.get("first_scheduled", now)
                    self._observer.on_first_token(now - self.arrival, max(0.0, scheduled - self.arrival))
            elif self._observer:
                self._observer.on_tokens(now - self._last_token_at)
            self._last_token_at = now
            self._num_tokens = num_tokens
        if out.finished:
            self._finished = True
            if self._observer:
                reasons = [c.finish_reason for c in self._latest.values()]
                self._observer.on_finish(now - self.arrival, reasons[0] if reasons else None)
        self._event.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._event.set()

    def snapshot(self) -> StreamUpdate:
        outputs = tuple(self._latest[i] for i in sorted(self._latest))
        return StreamUpdate(outputs, self._finished, self._num_cached)

    async def __aiter__(self) -> AsyncIterator[StreamUpdate]:
        while True:
            await self._event.wait()
            self._event.clear()
            if self._error is not None:
                raise self._error
            yield self.snapshot()
            if self._finished:
                return


Command = Callable[["LLMEngine"], None]


class AsyncEngine:
    """Owns the engine thread; every public method is called from the event loop."""

    def __init__(self, engine: LLMEngine, observer_factory: Callable[[], RequestObserver] | None = None) -> None:
        self.engine = engine
        self.observer_factory = observer_factory
        self._inbox: list[Command] = []
        self._cond = threading.Condition()
        self._streams: dict[str, RequestStream] = {}
        self._not_started: dict[str, int] = {}
        """Requests without a first token yet -> the sequences they will run (n)."""
        self._pending: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._dead: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats: Any = engine.stats()
        """Latest ``EngineStats`` (refreshed by the engine thread after each step)."""
        self.steps = 0
        """Engine steps run so far."""
        self.busy_s = 0.0
        """Seconds spent inside ``step()`` (the rest of the thread's time is waiting or inbox work)."""
        self.failed_steps = 0
        """Steps that raised (their requests failed; the engine went on)."""
        self._failures_in_a_row = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the engine thread; must be called from the event loop that will read outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="shoal-engine", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop the thread and fail any remaining streams."""
        for request_id in list(self._streams):
            self.abort(request_id)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
        self._fail_all(EngineDeadError("the server is shutting down"))

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    @property
    def num_queued(self) -> int:
        """Sequences (requests x n) accepted that have not produced a token yet (the backpressure measure)."""
        return sum(self._not_started.values())

    # ------------------------------------------------------------ requests

    async def add_request(
        self,
        request_id: str,
        params: Any,
        *,
        prompt_token_ids: list[int],
        arrival: float | None = None,
        priority: int = 0,
        program_id: str | None = None,
        retention_s: float | None = None,
        tenant: str = "",
        cache_salt: str = "",
    ) -> RequestStream:
        """Hand a request to the engine; returns once the engine accepted it.

        Raises whatever ``LLMEngine.add_request`` raises (``ValueError``...) or
        :class:`EngineDeadError`.
        """
        self._check_alive()
        observer = self.observer_factory() if self.observer_factory else None
        stream = RequestStream(request_id, arrival if arrival is not None else time.monotonic(), observer)
        self._streams[request_id] = stream
        self._not_started[request_id] = max(1, int(getattr(params, "n", 1)))

        def add(engine: LLMEngine) -> None:
            engine.add_request(
                request_id,
                None,
                params,
                prompt_token_ids=prompt_token_ids,
                priority=priority,
                program_id=program_id,
                retention_s=retention_s,
                tenant=tenant,
                cache_salt=cache_salt,
            )

        try:
            await self._call(add)
        except BaseException:
            self._forget(request_id)
            # Cancelled while queued: the add may still run; the abort queued after it undoes it.
            self._submit(lambda engine: _quiet_abort(engine, request_id))
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Abort a request (no-op once finished); its blocks are freed before the next step."""
        if self._forget(request_id) is None:
            return
        self._submit(lambda engine: _quiet_abort(engine, request_id))

    def fail_in_flight(self, exc: BaseException) -> None:
        """End every request in flight with ``exc`` (drain timeout) and abort them in the engine."""
        self._fail_requests(None, exc)

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run ``fn(engine)`` on the engine thread between two steps and return its result."""
        self._check_alive()
        return await self._call(fn)

    # ------------------------------------------------------------ internals (event loop side)

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead!r}")
        if self._stopping or self._loop is None:
            raise EngineDeadError("the engine is not running")

    def _forget(self, request_id: str) -> RequestStream | None:
        self._not_started.pop(request_id, None)
        return self._streams.pop(request_id, None)

    async def _call(self, fn: Callable[[LLMEngine], T]) -> T:
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[T] = loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

        def run(engine: LLMEngine) -> None:
            try:
                result = fn(engine)
            except BaseException as exc:
                self._post(_settle, future, None, exc)
            else:
                self._post(_settle, future, result, None)

        self._submit(run)
        return await future

    def _submit(self, command: Command) -> None:
        with self._cond:
            self._inbox.append(command)
            self._cond.notify()

    def _dispatch(self, outputs: Sequence[RequestOutput], now: float) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            stream._push(out, now)
            if stream.started:
                self._not_started.pop(out.request_id, None)
            if out.finished:
                self._forget(out.request_id)

    def _fail_requests(self, request_ids: frozenset[str] | None, exc: BaseException) -> None:
        """Fail these requests' streams (None: every request in flight) and abort them in the engine."""
        for request_id in list(self._streams) if request_ids is None else request_ids:
            stream = self._forget(request_id)
            if stream is not None:
                stream._fail(exc)
                if request_ids is None:  # the engine did not clean up after itself: do it
                    self._submit(functools.partial(_quiet_abort, request_id=request_id))

    def _fail_all(self, exc: BaseException) -> None:
        # Commands still in the inbox will never run: fail whoever awaits them.
        for future in list(self._pending):
            _settle(future, None, exc)
        for request_id in list(self._streams):
            stream = self._forget(request_id)
            if stream is not None:
                stream._fail(exc)

    # ------------------------------------------------------------ engine thread

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(fn, *args)

    def _take_inbox(self, block: bool) -> list[Command]:
        with self._cond:
            while block and not self._inbox and not self._stopping:
                self._cond.wait()
            commands, self._inbox = self._inbox, []
            return commands

    def _run(self) -> None:
        engine = self.engine
        busy = False
        try:
            while True:
                commands = self._take_inbox(block=not busy)
                for command in commands:
                    command(engine)
                if self._stopping:
                    return
                busy = engine.has_unfinished_requests()
                if busy:
                    start = time.perf_counter()
                    try:
                        outputs = engine.step()
                    except StepFailedError as exc:
                        self._count_failure(exc)
                        self._post(self._fail_requests, exc.request_ids, RequestFailedError(exc.cause))
                        self.stats = engine.stats()
                        busy = engine.has_unfinished_requests()
                        continue
                    except Exception as exc:
                        # A step failed without saying which requests it held: fail them all,
                        # then wait for the aborts the event loop sends back before stepping again.
                        logger.exception("engine step failed; failing every request in flight")
                        self._count_failure(exc)
                        self._post(self._fail_requests, None, RequestFailedError(exc))
                        busy = False
                        continue
                    self._failures_in_a_row = 0
                    now = time.monotonic()
                    self.busy_s += time.perf_counter() - start
                    self.steps += 1
                    self.stats = engine.stats()
                    if outputs:
                        self._post(self._dispatch, outputs, now)
                    busy = engine.has_unfinished_requests()
                elif commands:
                    self.stats = engine.stats()
        except BaseException as exc:
            logger.exception("engine loop failed; the server is unhealthy")
            self._dead = exc
            self._post(self._fail_all, EngineDeadError(f"the engine stopped: {exc!r}"))


    def _count_failure(self, exc: Exception) -> None:
        self.failed_steps += 1
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= MAX_CONSECUTIVE_STEP_FAILURES:
            raise RuntimeError(f"{self._failures_in_a_row} engine steps failed in a row") from exc


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _quiet_abort(engine: LLMEngine, request_id: str) -> None:
    with contextlib.suppress(KeyError, ValueError):
        engine.abort_request(request_id)
