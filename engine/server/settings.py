"""HTTP-side settings of one engine replica."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """HTTP-side settings of one replica (engine settings live in ``EngineConfig``)."""

    served_model_name: str
    model_path: str = ""
    max_waiting: int = 256
    """Most accepted requests that have not produced a token yet; past it, 429."""
    max_body_bytes: int = 8 * 1024 * 1024
    retry_after_s: int = 1
    api_key: str | None = None
    tool_call_parser: str = "hermes"
    """``hermes`` (Qwen/Hermes ``<tool_call>`` JSON) or ``none``."""
    block_size: int = 16
    max_header_bytes: int = 64 * 1024
    """Total size of the request line and headers; past it, 431."""
    max_header_count: int = 100
    """Most request headers; past it, 431."""
    header_timeout_s: float = 10.0
    """Time to receive the complete request head; past it, 408 and the connection closes."""
    body_timeout_s: float = 60.0
    """Time to receive the complete body (e.g. a Content-Length never fulfilled); past it, 408."""
    keep_alive_s: float = 30.0
    """Idle time after which a keep-alive connection is closed."""
    tokenizer_threads: int = 2
    """Threads that render chat templates and tokenize (off the event loop)."""
