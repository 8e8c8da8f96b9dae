"""SIMULATOR: one engine replica serving program calls, in virtual time.

KV in ``block_size``-token blocks, counted (no tensors): full blocks carry a hash (the
program's chained prefix, the shared system prompt's blocks shared by every program),
a free block whose hash is still there is a cache hit until it is reused (LRU; a
finished call's tail goes first so prefixes outlive suffixes). Program pins hold a
finished call's blocks until a TTL, an unpin or the program's next call. A step runs
decodes first, then prompt chunks, then admissions (queue order, the head blocks),
under a token budget; a sequence that needs a block when none is free preempts the
newest running sequence, which is recomputed later (its computed blocks stay cached
until reused). Step time comes from the fitted ``CostModel``.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass, field

from bench.sim_programs.costmodel import CostModel

SHARED_PREFIX_SPACE = 1 << 40


@dataclass(frozen=True)
class EngineSpec:
    """One simulated replica (the real engine's settings of the same names)."""

    num_blocks: int = 1024
    block_size: int = 16
    token_budget: int = 1024
    """Tokens per step (``max_num_batched_tokens``)."""
    max_seqs: int = 128
    pin_quota_blocks: int | None = None
    """Blocks all program pins together may hold (the real engine's per-tenant quota, one tenant
    here: a quarter of the pool by default there); past it the oldest pins go. None: no quota."""


@dataclass
class ProgramKV:
    """Per-program facts the engine updates: how far its context has ever been computed."""

    index: int
    ever_computed: int = 0


@dataclass
class SimCall:
    """One LLM call of a program on an engine."""

    cid: int
    program: ProgramKV
    prompt_tokens: int
    output_tokens: int
    shared_tokens: int
    """Leading tokens that are the shared system prompt."""
    queue_key: float = 0.0
    """Lower is admitted first (ties: arrival order)."""
    retention_s: float | None = None
    # engine-side state
    seq: int = 0
    computed: int = 0
    generated: int = 0
    hashes: list[int] = field(default_factory=list)
    """Registered (full, hashed) blocks this call holds a reference on."""
    anon: int = 0
    """Blocks held that are not full yet."""
    admitted_once: bool = False
    hit_tokens: int = 0
    recomputed_tokens: int = 0
    preemptions: int = 0

    @property
    def target(self) -> int:
        """Tokens whose KV must exist before the next token can be sampled."""
        return self.prompt_tokens + max(0, self.generated - 1) if self.generated else self.prompt_tokens

    def block_hash(self, i: int, block_size: int) -> int:
        if (i + 1) * block_size <= self.shared_tokens:
            return SHARED_PREFIX_SPACE + i
        return (self.program.index + 1) * 1_000_000 + i


class SimEngine:
    """A replica: paged KV blocks with prefix caching, pins, preemption and a step timer."""

    def __init__(self, name: str, spec: EngineSpec, cost: CostModel) -> None:
        self.name = name
        self.spec = spec
        self.cost = cost
        self.ref: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.anon = 0
        self.pins: dict[int, tuple[list[int], float]] = {}
        """program index -> (hashes held, expiry)."""
        self.waiting: list[tuple[float, int, SimCall]] = []
        self.running: list[SimCall] = []
        self.busy_until: float | None = None
        self._plan: tuple[list[SimCall], list[tuple[SimCall, int]]] | None = None
        self._seq = 0
        self.busy_s = 0.0
        self.preemptions = 0
        self.evictions = 0

    # what the router sees -----------------------------------------------------------------------

    @property
    def used_blocks(self) -> int:
        """Blocks referenced by running calls or pins (not evictable)."""
        return len(self.ref) - len(self.lru) + self.anon

    @property
    def free_blocks(self) -> int:
        """Blocks a new allocation can take (free, or cached and evictable)."""
        return self.spec.num_blocks - self.used_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self.lru)

    @property
    def pinned_blocks(self) -> int:
        return len({h for hashes, _ in self.pins.values() for h in hashes})

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.spec.num_blocks

    def match_tokens(self, call: SimCall) -> int:
        """Prompt tokens of ``call`` cached here now (precise prefix affinity)."""
        bs = self.spec.block_size
        n = 0
        while n * bs < call.prompt_tokens and call.block_hash(n, bs) in self.ref:
            n += 1
        return n * bs

    def check_blocks(self) -> None:
        """Invariant: every block is free, cached, or referenced by a call or a pin, exactly."""
        refs: dict[int, int] = {}
        for call in self.running:
            for h in call.hashes:
                refs[h] = refs.get(h, 0) + 1
        for hashes, _ in self.pins.values():
            for h in hashes:
                refs[h] = refs.get(h, 0) + 1
        assert {h: c for h, c in self.ref.items() if c} == refs, "block refcounts drifted"
        assert set(self.lru) == {h for h, c in self.ref.items() if c == 0}, "LRU out of sync"
        assert self.anon == sum(c.anon for c in self.running), "anonymous blocks leaked"
        assert self.used_blocks >= 0 and len(self.ref) + self.anon <= self.spec.num_blocks, "over capacity"
        assert all(not c.hashes and not c.anon for _, _, c in self.waiting), "waiting call holds blocks"

    # calls and pins ----------------------------------------------------------------------------

    def add(self, call: SimCall) -> None:
        self._seq += 1
        call.seq = self._seq
        bisect.insort(self.waiting, (call.queue_key, call.seq, call))

    def pin(self, call: SimCall, ttl_s: float, now: float) -> None:
        """Keep a finished call's blocks (its reference moves to a pin) for ``ttl_s``."""
        self.unpin(call.program.index)
        self.pins[call.program.index] = (call.hashes, now + ttl_s)
        call.hashes = []
        quota = self.spec.pin_quota_blocks
        while quota is not None and len(self.pins) > 1 and self.pinned_blocks > quota:
            self.unpin(next(iter(self.pins)))  # oldest first (insertion order), as the engine does

    def unpin(self, program: int) -> None:
        held = self.pins.pop(program, None)
        if held is not None:
            self._deref(held[0])

    def _expire_pins(self, now: float) -> None:
        for program in [p for p, (_, until) in self.pins.items() if until <= now]:
            self.unpin(program)

    def _release_oldest_pin(self) -> bool:
        if not self.pins:
            return False
        self.unpin(min(self.pins, key=lambda p: self.pins[p][1]))
        return True

    def _deref(self, hashes: list[int]) -> None:
        for h in reversed(hashes):  # tail first into the LRU: evicted before its prefix
            count = self.ref[h] - 1
            self.ref[h] = count
            if count == 0:
                self.lru[h] = None

    def _allocate(self, n: int) -> bool:
        cap = self.spec.num_blocks
        while cap - len(self.ref) - self.anon < n and self.lru:
            h, _ = self.lru.popitem(last=False)
            del self.ref[h]
            self.evictions += 1
        if cap - len(self.ref) - self.anon < n:
            return False
        self.anon += n
        return True

    def _register(self, call: SimCall, upto_tokens: int) -> None:
        bs = self.spec.block_size
        while (len(call.hashes) + 1) * bs <= upto_tokens and call.anon > 0:
            h = call.block_hash(len(call.hashes), bs)
            call.anon -= 1
            self.anon -= 1
            count = self.ref.get(h)
            if count is None:
                self.ref[h] = 1
            else:  # the same block was cached meanwhile: share it, ours goes back to the pool
                if count == 0:
                    del self.lru[h]
                self.ref[h] = count + 1
            call.hashes.append(h)

    def _free(self, call: SimCall) -> None:
        self._deref(call.hashes)
        call.hashes = []
        self.anon -= call.anon
        call.anon = 0

    def _grow(self, call: SimCall, tokens: int) -> bool:
        """Make running ``call`` hold blocks for ``tokens`` tokens, preempting newer calls if needed."""
        bs = self.spec.block_size
        need = math.ceil(tokens / bs) - len(call.hashes) - call.anon
        while need > 0 and not self._allocate(need):
            victim = max(self.running, key=lambda c: c.seq)
            if victim is not call:
                self._preempt(victim)
            elif len(self.running) == 1 and self._release_oldest_pin():
                continue  # only pins stand in the way: give them up rather than stall
            else:
                return False
        if need > 0:
            call.anon += need
        return True

    def _preempt(self, call: SimCall) -> None:
        self._free(call)
        self.running.remove(call)
        call.computed = 0
        call.preemptions += 1
        self.preemptions += 1
        bisect.insort(self.waiting, (call.queue_key, call.seq, call))

    def _admit(self, call: SimCall, budget: int) -> int:
        """Start ``call`` (cache hits first); returns the prompt tokens to compute now, 0 if it does not fit."""
        bs = self.spec.block_size
        hits = 0
        while hits < (call.target - 1) // bs and call.block_hash(hits, bs) in self.ref:
            hits += 1
        held = [call.block_hash(i, bs) for i in range(hits)]
        for h in held:
            if self.ref[h] == 0:
                del self.lru[h]
            self.ref[h] += 1
        call.hashes = held
        call.computed = hits * bs
        available = self.spec.num_blocks - len(self.ref) - self.anon + len(self.lru)
        take = min(call.target - call.computed, budget, available * bs)
        if take <= 0 or not self._allocate(math.ceil((call.computed + take) / bs) - hits):
            self._free(call)
            call.computed = 0
            return 0
        call.anon = math.ceil((call.computed + take) / bs) - hits
        if not call.admitted_once:
            call.admitted_once = True
            call.hit_tokens = call.computed
        self.unpin(call.program.index)  # the new call holds what the pin kept
        return take

    # stepping ------------------------------------------------------------------------------------

    def start_step(self, now: float) -> float | None:
        """Plan a step at ``now``; returns its end time, or None when there is nothing to run."""
        self._expire_pins(now)
        budget = self.spec.token_budget
        decodes: list[SimCall] = []
        for call in list(self.running):
            if call.computed >= call.target and call in self.running:
                if self._grow(call, call.computed + 1):
                    decodes.append(call)
                else:
                    self._preempt(call)
        decodes = [c for c in decodes if c in self.running]
        budget -= len(decodes)
        chunks: list[tuple[SimCall, int]] = []
        for call in list(self.running):
            left = call.target - call.computed
            if left <= 0 or budget <= 0 or call not in self.running:
                continue
            take = min(left, budget)
            if self._grow(call, call.computed + take):
                chunks.append((call, take))
                budget -= take
        while self.waiting and budget > 0 and len(self.running) < self.spec.max_seqs:
            _, _, call = self.waiting[0]
            take = self._admit(call, budget)
            if not take:
                if not self.running and self._release_oldest_pin():
                    continue  # only pins stand in the way: give them up rather than stall
                break
            self.waiting.pop(0)
            self.running.append(call)
            chunks.append((call, take))
            budget -= take
        decodes = [c for c in decodes if c in self.running]
        chunks = [(c, t) for c, t in chunks if c in self.running]
        if not decodes and not chunks:
            return None
        prefill = sum(t for _, t in chunks)
        work = sum(t * (c.computed + t / 2) for c, t in chunks) + sum(c.computed for c in decodes)
        duration = self.cost.step_time(prefill, work, len(decodes))
        self._plan = (decodes, chunks)
        self.busy_until = now + duration
        self.busy_s += duration
        return self.busy_until

    def finish_step(self) -> list[SimCall]:
        """Apply the planned step; returns the calls that finished (still holding their blocks)."""
        assert self._plan is not None
        decodes, chunks = self._plan
        self._plan = None
        self.busy_until = None
        done: list[SimCall] = []
        for call in decodes:
            call.computed += 1
            call.generated += 1
            self._register(call, call.computed)
            if call.generated >= call.output_tokens:
                done.append(call)
        for call, take in chunks:
            start = call.computed
            ever = call.program.ever_computed
            call.recomputed_tokens += max(0, min(start + take, ever) - start)
            call.computed += take
            call.program.ever_computed = max(ever, call.computed)
            self._register(call, call.computed)
            if call.computed >= call.target and call.generated == 0:
                call.generated = 1
                if call.generated >= call.output_tokens:
                    done.append(call)
            elif call.computed >= call.target:  # recomputed after a preemption: sampling resumes
                call.generated += 1
                if call.generated >= call.output_tokens:
                    done.append(call)
        for call in decodes:
            call.program.ever_computed = max(call.program.ever_computed, call.computed)
        for call in done:
            self.running.remove(call)
        return done

    def release(self, call: SimCall, now: float, retention_s: float | None) -> None:
        """A finished call gives back its blocks, or hands them to a program pin."""
        self.anon -= call.anon
        call.anon = 0
        if retention_s and retention_s > 0:
            self.pin(call, retention_s, now)
        else:
            self._free(call)
