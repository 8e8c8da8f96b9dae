"""An async streaming client that times every request (TTFT, inter-chunk gaps, end-to-end)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from loadgen.workload import RequestSpec


@dataclass
class RequestResult:
    """What one request measured (times from ``time.perf_counter``)."""

    ok: bool
    status: int
    start: float
    ttft: float = 0.0
    e2e: float = 0.0
    chunk_gaps: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    error: str = ""
    turn: int = 0

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first."""
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


async def send_streaming(client: httpx.AsyncClient, spec: RequestSpec, turn: int = 0) -> RequestResult:
    body = {**spec.body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    result = RequestResult(ok=False, status=0, start=start, turn=turn)
    last = start
    pieces: list[str] = []
    try:
        async with client.stream("POST", spec.path, json=body) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:200]
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message"))
                    return result
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.output_tokens = usage["completion_tokens"]
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                for choice in chunk.get("choices", []):
                    piece = choice.get("text")
                    if piece is None:
                        piece = (choice.get("delta") or {}).get("content")
                    if not piece:
                        continue
                    now = time.perf_counter()
                    if not pieces:
                        result.ttft = now - start
                    else:
                        result.chunk_gaps.append(now - last)
                    last = now
                    pieces.append(piece)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = time.perf_counter() - start
    result.text = "".join(pieces)
    result.ok = True
    return result


async def send_plain(client: httpx.AsyncClient, spec: RequestSpec) -> RequestResult:
    """Non-streamed (cheapest on the client: one JSON parse per request)."""
    start = time.perf_counter()
    try:
        response = await client.post(spec.path, json=spec.body)
    except httpx.HTTPError as exc:
        return RequestResult(ok=False, status=0, start=start, error=str(exc))
    e2e = time.perf_counter() - start
    if response.status_code != 200:
        return RequestResult(ok=False, status=response.status_code, start=start, error=response.text[:200])
    usage = response.json()["usage"]
    return RequestResult(ok=True, status=200, start=start, ttft=e2e, e2e=e2e, prompt_tokens=usage["prompt_tokens"],
                         output_tokens=usage["completion_tokens"])  # fmt: skip
