"""What the server needs from an engine (``LLMEngine`` and the test fake have it); its outputs are
the engine's own torch-free types (:mod:`shoal.engine.outputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from shoal.engine.outputs import RequestOutput


class EngineLike(Protocol):
    """What the server needs from ``shoal.engine.llm_engine.LLMEngine``."""

    tokenizer: Any
    model_name: str
    max_model_len: int

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        params: Any,
        *,
        prompt_token_ids: list[int] | None = None,
        priority: int = 0,
        program_id: str | None = None,
        retention_s: float | None = None,
        tenant: str = "",
        cache_salt: str = "",
    ) -> None: ...
    def step(self) -> Sequence[RequestOutput]: ...
    def abort_request(self, request_id: str) -> None: ...
    def has_unfinished_requests(self) -> bool: ...
    def release_program(self, program_id: str, tenant: str = "") -> int: ...
    def stats(self) -> Any: ...
    def cached_block_hashes(self) -> list[int]: ...


class RequestObserver(Protocol):
    """Per-request timing hooks (metrics); called on the event loop."""

    def on_first_token(self, ttft_s: float, queue_s: float) -> None: ...
    def on_tokens(self, itl_s: float) -> None: ...
    def on_finish(self, e2e_s: float, finish_reason: str | None) -> None: ...
