"""Which router replica owns an agent program: rendezvous hashing of its id over the live replicas.

A program's state (turns, accounting, pause/resume) lives in exactly one router process.
Every replica computes the same owner from the same live set, with no shared state; a
replica that dies moves only its own programs, each to the next replica in its order.
Pure: no I/O (``shoal.router.peers`` tracks which replicas are live).
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.router.picking.hashing import hrw_weight

_KEY_PREFIX = "program:"
"""Keeps program ownership independent of the endpoint pickers' tie-breaks on the same id."""


def owner_order(program_id: str, replicas: Iterable[str]) -> list[str]:
    """``replicas`` (base URLs) from the program's owner to its last fallback."""
    key = _KEY_PREFIX + program_id
    return sorted(set(replicas), key=lambda url: (-hrw_weight(key, url), url))


def owner_of(program_id: str, live_replicas: Iterable[str]) -> str:
    """The replica that owns ``program_id`` among ``live_replicas``; ValueError when there are none."""
    order = owner_order(program_id, live_replicas)
    if not order:
        raise ValueError("no live router replica to own the program")
    return order[0]
