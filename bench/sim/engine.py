"""SIMULATOR: a timed model of one engine replica (continuous batching, chunked prefill).

Time advances in steps: decodes first (one token per running request), then prompt
chunks fill the step's token budget. A step lasts
``step_base_s + prefill_per_token_s * prefill_tokens + decode_per_seq_s * decodes``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.sim.cache import BlockCache


@dataclass(frozen=True)
class EngineSpec:
    capacity_blocks: int = 3000
    block_size: int = 16
    token_budget: int = 2048
    max_seqs: int = 64
    step_base_s: float = 0.008
    prefill_per_token_s: float = 0.00012
    decode_per_seq_s: float = 0.0002


@dataclass
class SimRequest:
    """One generation: its prompt's block hashes and those of prompt + output (for caching)."""

    rid: int
    arrival: float
    prompt_len: int
    output_len: int
    prompt_hashes: list[int]
    full_hashes: list[int]
    """Hashes of the full blocks of prompt + output."""
    first_token_at: float | None = None
    finished_at: float | None = None
    cached_tokens: int = 0
    # engine-side state
    hits: int = 0
    prefilled: int = 0
    generated: int = 0
    allocated: int = 0
    registered: list[int] = field(default_factory=list)


class SimEngine:
    def __init__(self, name: str, spec: EngineSpec) -> None:
        self.name = name
        self.spec = spec
        self.cache = BlockCache(spec.capacity_blocks)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.busy_until: float | None = None
        self._step: tuple[list[tuple[SimRequest, int]], list[SimRequest]] | None = None
        self.busy_time = 0.0

    # routing surface ------------------------------------------------------------------------------

    def metrics(self) -> tuple[float, float, float]:
        """(running, waiting, kv usage), as ``/metrics`` reports them."""
        return float(len(self.running)), float(len(self.waiting)), self.cache.pinned_fraction

    def metrics_text(self, model: str = "sim") -> str:
        running, waiting, kv = self.metrics()
        return (
            f'vllm:num_requests_running{{model_name="{model}"}} {running}\n'
            f'vllm:num_requests_waiting{{model_name="{model}"}} {waiting}\n'
            f'vllm:kv_cache_usage_perc{{model_name="{model}"}} {kv}\n'
        )

    def digest(self) -> list[int]:
        return self.cache.hashes()

    # engine ---------------------------------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        self.waiting.append(req)

    def _admit(self) -> None:
        bs = self.spec.block_size
        while self.waiting and len(self.running) < self.spec.max_seqs:
            req = self.waiting[0]
            hits = self.cache.match(req.prompt_hashes)
            if hits * bs >= req.prompt_len:  # the last prompt token is always recomputed
                hits -= 1
            need = math.ceil((req.prompt_len + req.output_len) / bs) - hits
            self.cache.pin(req.prompt_hashes[:hits])  # before allocating, so eviction spares them
            if not self.cache.allocate(need):
                self.cache.release(req.prompt_hashes[:hits], 0)
                break
            self.waiting.popleft()
            req.hits = hits
            req.cached_tokens = hits * bs
            req.prefilled = req.cached_tokens
            req.allocated = need
            req.registered = list(req.prompt_hashes[:hits])
            self.running.append(req)

    def start_step(self, now: float) -> float | None:
        """Plan a step at ``now``; returns its end time, or None when idle."""
        self._admit()
        if not self.running:
            return None
        budget = self.spec.token_budget
        decodes = [r for r in self.running if r.prefilled >= r.prompt_len]
        budget -= len(decodes)
        chunks: list[tuple[SimRequest, int]] = []
        for req in self.running:
            if budget <= 0:
                break
            left = req.prompt_len - req.prefilled
            if left > 0:
                take = min(left, budget)
                chunks.append((req, take))
                budget -= take
        prefill_tokens = sum(t for _, t in chunks)
        duration = (
            self.spec.step_base_s + self.spec.prefill_per_token_s * prefill_tokens + self.spec.decode_per_seq_s * len(decodes)
        )
        self._step = (chunks, decodes)
        self.busy_until = now + duration
        self.busy_time += duration
        return self.busy_until

    def finish_step(self, now: float) -> tuple[list[SimRequest], list[SimRequest]]:
        """Apply the planned step; returns (requests that got their first token, finished requests)."""
        assert self._step is not None
        chunks, decodes = self._step
        self._step = None
        self.busy_until = None
        first: list[SimRequest] = []
        done: list[SimRequest] = []
        for req in decodes:
            req.generated += 1
            if req.generated >= req.output_len:
                done.append(req)
        for req, take in chunks:
            req.prefilled += take
            if req.prefilled >= req.prompt_len:
                req.first_token_at = now
                req.generated = 1
                first.append(req)
                for h in req.prompt_hashes[req.hits :]:
                    self.cache.register(h)
                req.registered = list(req.prompt_hashes)
                if req.generated >= req.output_len:
                    done.append(req)
        for req in done:
            for h in req.full_hashes[len(req.registered) :]:
                self.cache.register(h)
                req.registered.append(h)
            self.cache.release(req.registered, req.allocated - (len(req.registered) - req.hits))
            req.finished_at = now
            self.running.remove(req)
        return first, done
