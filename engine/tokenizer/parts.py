"""What a tokenizer is built from, whatever its source (HF folder, GGUF metadata, payload)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer as HFTokenizer


@dataclass(frozen=True)
class TokenizerParts:
    """The arguments of :class:`shoal.engine.tokenizer.Tokenizer`, read from one source."""

    backend: HFTokenizer
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    extra_eos_token_ids: tuple[int, ...] = ()
    special_tokens: dict[str, str] = field(default_factory=dict)
    add_bos_token: bool | None = None
    """Install a post-processor that adds BOS (None: keep the backend's own)."""
    add_eos_token: bool | None = None
