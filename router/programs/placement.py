"""Where a call of a program may run: engines with room under the low watermark.

Pure functions over the engines' reported capacities and the per-engine ledgers of one
decision round.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.router.programs.accounting import EngineLedger
from shoal.router.programs.state import Call, EngineCapacity, Program

Placement = tuple[frozenset[str] | None, str | None]
"""(allowed engines, engine charged for the program's KV): ``(None, None)`` means any engine
(no engine reports capacity); an empty set means no room anywhere."""


def usable_engines(engines: Mapping[str, EngineCapacity], call: Call) -> list[str]:
    """Engines that are up, report a KV pool, and are candidates for the call."""
    return [
        url for url, cap in engines.items()
        if cap.up and cap.total_blocks > 0 and (call.candidates is None or url in call.candidates)
    ]


def extra_tokens(ledger: EngineLedger | None, program: Program, call: Call, grow_to: int = 0) -> int:
    """KV tokens the call's program would add to an engine (blocks already there count once);
    ``grow_to``: the context it is expected to grow to (a new program)."""
    tokens = max(program.context_tokens, call.prompt_tokens, grow_to)
    if ledger is None:
        return tokens
    if program.key in ledger.members:
        return max(0, tokens - program.context_tokens)
    seen = call.extra_seen.get(ledger.engine)
    if seen is not None and seen[0] == ledger.version and seen[1] == tokens:
        return seen[2]  # a held call is looked at every round: most ledgers did not change since
    hashes = call.hash_set if call.block_hashes else frozenset(program.block_hashes)
    extra = ledger.marginal_of(tokens, hashes, program.hash_block_size)
    call.extra_seen[ledger.engine] = (ledger.version, tokens, extra)
    return extra


def room_after(
    cap: EngineCapacity, ledger: EngineLedger | None, program: Program, call: Call, low_watermark: float,
    grow_to: int = 0,
) -> int:
    """Tokens left under the low watermark once the call's program is there (< 0: no room)."""
    extra = extra_tokens(ledger, program, call, grow_to)
    limit = low_watermark * cap.total_tokens
    if ledger is None or ledger.working_set == 0:
        return max(0, int(limit - extra))  # a lone program always fits (engines cap max_model_len)
    return int(limit - ledger.working_set - extra)


def headroom(
    engines: Mapping[str, EngineCapacity], ledgers: Mapping[str, EngineLedger], low_watermark: float,
    reserved: Mapping[str, int],
) -> float:
    """The most tokens any engine could still take under the low watermark (infinite while an
    engine is empty: a lone program always fits). A call needing more waits without a look."""
    best = 0.0
    for url, cap in engines.items():
        if not cap.up or cap.total_blocks <= 0:
            continue
        ledger = ledgers.get(url)
        if (ledger is None or ledger.working_set == 0) and not reserved.get(url):
            return float("inf")
        used = ledger.working_set if ledger is not None else 0
        best = max(best, low_watermark * cap.total_tokens - used - reserved.get(url, 0))
    return best


def least_extra(program: Program, call: Call, grow_to: int = 0) -> int:
    """Tokens the call adds at least anywhere (all of its blocks already there)."""
    hashes = len(call.block_hashes) if call.block_hashes else len(program.block_hashes)
    return max(program.context_tokens, call.prompt_tokens, grow_to) - hashes * program.hash_block_size


def reservation(
    engines: Mapping[str, EngineCapacity], ledgers: Mapping[str, EngineLedger], program: Program, call: Call,
) -> tuple[str, int] | None:
    """(engine, tokens) to hold back for a call that does not fit yet, so later, smaller calls
    cannot keep taking the room it waits for: its origin engine, else the least loaded one."""
    usable = usable_engines(engines, call)
    if not usable:
        return None
    if program.engine in usable:
        target = program.engine
    else:
        target = min(usable, key=lambda u: (_working_set(ledgers, u) / max(1, engines[u].total_tokens), u))
    return target, extra_tokens(ledgers.get(target), program, call)


def _working_set(ledgers: Mapping[str, EngineLedger], url: str) -> int:
    ledger = ledgers.get(url)
    return ledger.working_set if ledger is not None else 0


def place(
    engines: Mapping[str, EngineCapacity],
    ledgers: Mapping[str, EngineLedger],
    program: Program,
    call: Call,
    low_watermark: float,
    *,
    sticky: bool = False,
    force: bool = False,
    reserved: Mapping[str, int] | None = None,
    grow_to: int = 0,
) -> Placement:
    """The origin engine when it is usable and (unless ``sticky``/``force``) has room; else
    every engine with room (prefix affinity picks among them), charged to the roomiest.

    ``sticky``: an active program stays where its KV is; ``force``: the aging bound, the best
    engine even without room; ``reserved``: tokens held back per engine for calls ahead in the queue."""
    usable = usable_engines(engines, call)
    if not usable:
        return None, None
    origin = program.engine if program.engine in usable else None
    if origin is not None and (sticky or force):
        return frozenset({origin}), origin
    held = reserved or {}
    rooms = {
        url: room_after(engines[url], ledgers.get(url), program, call, low_watermark, grow_to) - held.get(url, 0)
        for url in usable
    }
    fitting = [url for url, room in rooms.items() if room >= 0]
    if origin is not None and origin in fitting:
        return frozenset({origin}), origin
    if fitting:
        return frozenset(fitting), max(fitting, key=lambda u: (rooms[u], u))
    if sticky or force:
        best = max(usable, key=lambda u: (rooms[u], u))
        return frozenset({best}), best
    return frozenset(), None


def resume_target(
    engines: Mapping[str, EngineCapacity], ledgers: Mapping[str, EngineLedger], program: Program, low_watermark: float,
) -> str | None:
    """Where a paused program between calls can get its room back under the low watermark:
    its origin engine (its blocks may still be cached) when it fits, else the roomiest
    engine it fits on; None: nowhere yet."""
    rooms: dict[str, float] = {}
    for url, cap in engines.items():
        if not cap.up or cap.total_blocks <= 0:
            continue
        ledger = ledgers.get(url)
        used = ledger.working_set if ledger is not None else 0
        extra = (
            ledger.marginal_of(program.context_tokens, frozenset(program.block_hashes), program.hash_block_size)
            if ledger is not None else program.context_tokens
        )
        rooms[url] = low_watermark * cap.total_tokens - used - extra
    if program.engine in rooms and rooms[program.engine] >= 0:
        return program.engine
    fitting = [url for url, room in rooms.items() if room >= 0]
    return max(fitting, key=lambda u: (rooms[u], u)) if fitting else None
