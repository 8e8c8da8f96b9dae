"""Rendezvous (highest-random-weight) hashing: consistent, and equal on every router replica.

Removing an endpoint only moves the keys that lived on it, and two routers with the same
candidate set always agree, with no shared state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def hrw_weight(key: str, member: str) -> int:
    """The 64-bit weight of ``member`` for ``key``."""
    digest = hashlib.blake2b(key.encode() + b"\0" + member.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def hrw_choose(key: str, members: Iterable[str]) -> str:
    """The member with the highest weight for ``key``; raises ValueError when empty."""
    best: str | None = None
    best_weight = -1
    for member in members:
        weight = hrw_weight(key, member)
        if weight > best_weight or (weight == best_weight and best is not None and member < best):
            best, best_weight = member, weight
    if best is None:
        raise ValueError("no members to choose from")
    return best
