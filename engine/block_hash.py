"""Chained block hashes for prefix caching.

Torch-free on purpose: the engine's block manager and the router's prefix-affinity
scorer both hash prompts with this module, so they always agree.

A block's hash covers its parent's hash, its tokens and an optional salt (e.g. a
LoRA name or a tenant), so equal hashes mean equal full prefixes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

ROOT_HASH = 0
"""Parent hash of the first block of every prompt."""


def hash_block(parent_hash: int, tokens: Sequence[int], salt: str = "") -> int:
    """Hash of one full block given its parent's hash. Returns a 64-bit int."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(struct.pack("<Q", parent_hash & 0xFFFF_FFFF_FFFF_FFFF))
    digest.update(struct.pack(f"<{len(tokens)}q", *tokens))
    if salt:
        digest.update(salt.encode())
    return int.from_bytes(digest.digest(), "little")


def prefix_block_hashes(tokens: Sequence[int], block_size: int, salt: str = "") -> list[int]:
    """Hashes of every *full* block of ``tokens`` (a trailing partial block is not hashed)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes: list[int] = []
    parent = ROOT_HASH
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash_block(parent, tokens[start : start + block_size], salt)
        hashes.append(parent)
    return hashes
