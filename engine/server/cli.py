"""``python -m shoal.engine serve``: server flags and the process lifecycle.

SIGTERM (Kubernetes pod deletion) or SIGINT: /health turns 503 at once and new
generation requests get 503 + Retry-After; after ``--drain-delay`` seconds (time
for load balancers to notice) the listening socket closes; running requests go
on for up to ``--drain-timeout`` seconds in all, then end with an OpenAI error
(streams: an error event and ``[DONE]``); the engine thread stops and the
process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from shoal.engine.config import EngineConfig
from shoal.engine.server.async_engine import AsyncEngine
from shoal.engine.server.errors import APIError
from shoal.engine.server.settings import ServerSettings

logger = logging.getLogger("shoal.engine.server")


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Add the HTTP server's flags to the ``serve`` sub-command."""
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="bind address (use 0.0.0.0 in a pod)")
    group.add_argument("--port", type=int, default=8000)
    group.add_argument(
        "--max-waiting", type=int, default=256,
        help="most accepted requests without a first token yet; past it 429 + Retry-After",
    )  # fmt: skip
    group.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body limit (413)")
    group.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish running requests on SIGTERM")
    group.add_argument(
        "--drain-delay", type=float, default=1.0,
        help="seconds between SIGTERM and closing the listener (new requests get 503 + Retry-After meanwhile)",
    )  # fmt: skip
    group.add_argument("--max-header-bytes", type=int, default=64 * 1024, help="request line + headers limit (431)")
    group.add_argument("--max-header-count", type=int, default=100, help="most request headers (431)")
    group.add_argument("--header-timeout", type=float, default=10.0, help="seconds to receive a request head (408)")
    group.add_argument("--body-timeout", type=float, default=60.0, help="seconds to receive a request body (408)")
    group.add_argument("--keep-alive-timeout", type=float, default=30.0, help="idle keep-alive connections close after this")
    group.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with 429")
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    group.add_argument("--access-log", action="store_true", help="log every HTTP request")
    group.add_argument(
        "--api-key", default=os.environ.get("SHOAL_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' (default: $SHOAL_API_KEY; /health and /metrics stay open)",
    )  # fmt: skip
    group.add_argument("--tool-call-parser", default="hermes", choices=["hermes", "none"])


class _DrainingServer(uvicorn.Server):
    """uvicorn, but a signal starts a drain and the process still exits 0.

    Stock uvicorn closes the listener at once (new clients get "connection refused") and
    cancels what is left at the graceful-shutdown timeout (clients get a cut response);
    here new requests get 503 for ``drain_delay`` seconds first, and requests still
    running at ``drain_timeout`` end with an OpenAI error. Stock uvicorn also re-raises
    the captured signal after shutdown, which turns a clean drain into exit status -15.
    """

    def __init__(
        self, config: uvicorn.Config, on_drain: Callable[[], None], engine: AsyncEngine,
        drain_delay: float, drain_timeout: float,
    ) -> None:  # fmt: skip
        super().__init__(config)
        self._on_drain = on_drain
        self._engine = engine
        self._drain_delay = drain_delay
        self._drain_timeout = drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            if sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        logger.info("signal %s: draining (listener closes in %.1fs, requests cut at %.0fs)",
                    sig, self._drain_delay, self._drain_timeout)  # fmt: skip
        self._on_drain()
        self._loop.call_soon_threadsafe(self._schedule_drain)

    def _schedule_drain(self) -> None:
        assert self._loop is not None
        self._loop.call_later(self._drain_delay, self._close_listener)
        self._loop.call_later(max(self._drain_timeout, self._drain_delay), self._cut_running)

    def _close_listener(self) -> None:
        self.should_exit = True

    def _cut_running(self) -> None:
        if self._engine.num_unfinished:
            logger.warning("drain timeout: ending %d running request(s)", self._engine.num_unfinished)
        self._engine.fail_in_flight(
            APIError(503, "The server shut down before the request finished.", code="server_shutdown")
        )


def _validate(args: argparse.Namespace) -> None:
    """A bad server flag is a ValueError (``main`` prints it as one line, exit status 2)."""
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_waiting < 1:
        raise ValueError(f"--max-waiting must be >= 1, got {args.max_waiting}")
    if args.max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if args.drain_timeout < 0:
        raise ValueError(f"--drain-timeout must be >= 0, got {args.drain_timeout}")
    if args.drain_delay < 0:
        raise ValueError(f"--drain-delay must be >= 0, got {args.drain_delay}")
    if args.max_header_bytes < 1024:
        raise ValueError(f"--max-header-bytes must be >= 1024, got {args.max_header_bytes}")
    if args.max_header_count < 8:
        raise ValueError(f"--max-header-count must be >= 8, got {args.max_header_count}")
    for flag in ("header_timeout", "body_timeout", "keep_alive_timeout"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")


def run_server(args: argparse.Namespace, config: EngineConfig) -> int:
    """Load the engine, serve until a signal, drain, return 0."""
    _validate(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A signal during the (slow) model load is still a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from shoal.engine.llm_engine import LLMEngine
    from shoal.engine.server.api_server import create_app
    from shoal.engine.server.http_limits import uvicorn_config

    engine = LLMEngine(config)
    settings = ServerSettings(
        served_model_name=engine.model_name,
        model_path=config.model,
        max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes,
        retry_after_s=args.retry_after,
        api_key=args.api_key,
        tool_call_parser=args.tool_call_parser,
        block_size=config.block_size,
        max_header_bytes=args.max_header_bytes,
        max_header_count=args.max_header_count,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keep_alive_s=args.keep_alive_timeout,
    )
    async_engine = AsyncEngine(engine)
    app = create_app(async_engine, settings)
    ctx = app.state.ctx
    uv_config = uvicorn_config(
        app,
        settings,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # a backstop only: requests still running at the drain timeout already ended with an error
        timeout_graceful_shutdown=math.ceil(args.drain_timeout) + 5,
    )
    server = _DrainingServer(
        uv_config,
        on_drain=lambda: setattr(ctx, "draining", True),
        engine=async_engine,
        drain_delay=args.drain_delay,
        drain_timeout=args.drain_timeout,
    )
    logger.info("serving %s on http://%s:%d", engine.model_name, args.host, args.port)
    server.run()
    return 0
