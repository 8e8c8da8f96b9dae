"""The tokenizer payload: a JSON-able description the router rebuilds the engine's exact tokenizer
from (``GET /shoal/tokenizer``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from shoal.engine.tokenizer.parts import TokenizerParts

PAYLOAD_VERSION = 1


def make_payload(
    backend: HFTokenizer,
    chat_template: str | None,
    special_tokens: Mapping[str, str],
    bos_token: str | None,
    eos_token: str | None,
    eos_token_ids: Iterable[int],
) -> dict[str, Any]:
    """The payload of a tokenizer; the backend JSON already holds the BOS/EOS post-processor."""
    return {
        "version": PAYLOAD_VERSION,
        "tokenizer_json": backend.to_str(),
        "chat_template": chat_template,
        "special_tokens": dict(special_tokens),
        "bos_token": bos_token,
        "eos_token": eos_token,
        "eos_token_ids": sorted(eos_token_ids),
    }


def read_payload(payload: Mapping[str, Any]) -> TokenizerParts:
    """What :func:`make_payload` wrote; ValueError for another payload version."""
    if payload.get("version") != PAYLOAD_VERSION:
        raise ValueError(f"unsupported tokenizer payload version {payload.get('version')!r}")
    return TokenizerParts(
        HFTokenizer.from_str(payload["tokenizer_json"]),
        chat_template=payload.get("chat_template"),
        bos_token=payload.get("bos_token"),
        eos_token=payload.get("eos_token"),
        extra_eos_token_ids=tuple(payload.get("eos_token_ids", ())),
        special_tokens=dict(payload.get("special_tokens") or {}),
    )
