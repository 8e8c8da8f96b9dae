"""``python -m shoal.engine serve``: server flags and the process lifecycle.

SIGTERM (Kubernetes pod deletion) or SIGINT: /health turns 503 and new
generation requests get 503, the listening socket closes, running requests
drain for up to ``--drain-timeout`` seconds (then they are aborted), the engine
thread stops and the process exits 0.
"""

from __future__ import annotations

import argparse
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
from shoal.engine.server.serving import ServerSettings

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

    Stock uvicorn re-raises the captured signal after shutdown, which turns a clean
    drain into exit status -15.
    """

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        logger.info("signal %s: draining (up to %.0fs)", sig, self.config.timeout_graceful_shutdown or 0)
        self._on_drain()
        self.should_exit = True


def _validate(args: argparse.Namespace) -> None:
    if not 0 <= args.port < 65536:
        raise SystemExit(f"error: --port must be in [0, 65535], got {args.port}")
    if args.max_waiting < 1:
        raise SystemExit(f"error: --max-waiting must be >= 1, got {args.max_waiting}")
    if args.max_body_bytes < 1024:
        raise SystemExit(f"error: --max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if args.drain_timeout < 0:
        raise SystemExit(f"error: --drain-timeout must be >= 0, got {args.drain_timeout}")


def run_server(args: argparse.Namespace, config: EngineConfig) -> int:
    """Load the engine, serve until a signal, drain, return 0."""
    _validate(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A signal during the (slow) model load is still a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from shoal.engine.llm_engine import LLMEngine
    from shoal.engine.server.api_server import create_app

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
    )
    app = create_app(AsyncEngine(engine), settings)
    ctx = app.state.ctx
    uv_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=math.ceil(args.drain_timeout),
        timeout_keep_alive=30,
    )
    server = _DrainingServer(uv_config, on_drain=lambda: setattr(ctx, "draining", True))
    logger.info("serving %s on http://%s:%d", engine.model_name, args.host, args.port)
    server.run()
    return 0
