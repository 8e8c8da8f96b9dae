"""The per-request timing hooks a request stream calls (the server's metrics implement them)."""

from __future__ import annotations

from typing import Protocol


class RequestObserver(Protocol):
    """Per-request timing hooks (metrics); called on the event loop."""

    def on_first_token(self, ttft_s: float, queue_s: float) -> None: ...
    def on_tokens(self, itl_s: float) -> None: ...
    def on_finish(self, e2e_s: float, finish_reason: str | None) -> None: ...
