"""Prompt -> chained block hashes, exactly as the engine's prefix cache computes them.

The tokenizer and chat template come from the engine (``GET /shoal/tokenizer``), so the
router's token ids, and hence its block hashes, match the engine's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.engine.block_hash import prefix_block_hashes
from shoal.engine.chat_format import chat_prompt_ids
from shoal.engine.tokenizer import Tokenizer
from shoal.router.openai_request import ParsedRequest

log = logging.getLogger("shoal.router.tokenization")

DEFAULT_BLOCK_SIZE = 16
TEXT_BYTES_PER_TOKEN = 4
"""Text fallback: a "block" is this many bytes per token of block size (about the same span)."""


@dataclass(frozen=True)
class PromptDigest:
    block_hashes: tuple[int, ...]
    num_tokens: int
    """Prompt tokens (estimated from text length when not tokenized)."""
    content_key: str
    """A short digest of the prompt text (tie-break key for prompts shorter than one block)."""


class PromptHasher:
    """Turns a parsed request into block hashes, with the pool's tokenizer or a text fallback."""

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, tokenizer: Tokenizer | None = None, text_fallback: bool = True) -> None:
        self.block_size = block_size
        self.tokenizer = tokenizer
        self.text_fallback = text_fallback

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], block_size: int | None = None, text_fallback: bool = True) -> PromptHasher:
        """Build from an engine's ``/shoal/tokenizer`` payload (which carries its block size)."""
        size = block_size or int(payload.get("block_size") or DEFAULT_BLOCK_SIZE)
        return cls(size, Tokenizer.from_payload(payload), text_fallback)

    def tokens(self, req: ParsedRequest) -> list[int] | None:
        """The prompt's token ids as the engine will see them, or None without a tokenizer."""
        body = req.body
        if req.kind == "completion":
            prompt = body["prompt"]
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                return list(prompt)
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
                return list(prompt[0])  # several prompts: the first one decides the placement
            if self.tokenizer is None:
                return None
            text = prompt if isinstance(prompt, str) else prompt[0]
            return self.tokenizer.encode(text)
        if self.tokenizer is None:
            return None
        return chat_prompt_ids(self.tokenizer, body)  # the engine server's own normalization

    def digest(self, req: ParsedRequest, salt: str = "", max_tokenized_bytes: int | None = None) -> PromptDigest:
        """Block hashes of ``req``'s prompt under the tenant's cache ``salt`` (the engine hashes its
        blocks with the same salt). A body over ``max_tokenized_bytes`` is not templated or
        tokenized: its text is hashed over that many leading bytes instead (bounded work and
        memory). Never raises: a prompt the template rejects gets none.

        CPU-heavy for large prompts: the proxy runs it off the event loop.
        """
        text = req.prompt_text()
        too_big = max_tokenized_bytes is not None and len(req.raw) > max_tokenized_bytes
        if too_big:
            assert max_tokenized_bytes is not None
            text = text[:max_tokenized_bytes]
        raw = text.encode(errors="surrogatepass")
        content_key = hashlib.blake2b(raw, digest_size=8).hexdigest()
        ids = None
        if not too_big:
            try:
                ids = self.tokens(req)
            except Exception as exc:  # the engine will report the real error to the client
                log.debug("cannot tokenize request for prefix affinity: %s", exc)
        if ids is not None:
            hashes = prefix_block_hashes(ids, self.block_size, salt=salt)
            return PromptDigest(tuple(hashes), len(ids), content_key)
        estimate = (len(req.raw) if too_big else len(raw)) // TEXT_BYTES_PER_TOKEN
        if not self.text_fallback and not too_big:
            return PromptDigest((), estimate, content_key)
        hashes = prefix_block_hashes(raw, self.block_size * TEXT_BYTES_PER_TOKEN, salt="text" + salt)
        return PromptDigest(tuple(hashes), estimate, content_key)
