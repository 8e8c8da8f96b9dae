"""Rebuilding a ``tokenizers`` tokenizer from GGUF ``tokenizer.*`` metadata."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from shoal.engine.tokenizer.parts import TokenizerParts

# GGUF token types (llama.cpp ``llama_token_type``).
_GGUF_CONTROL = 3
_GGUF_USER_DEFINED = 4

# Pre-tokenizer splits by GGUF ``tokenizer.ggml.pre``; anything else uses the GPT-2 split of ByteLevel.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def read_gguf_metadata(metadata: Mapping[str, Any]) -> TokenizerParts:
    """From GGUF ``tokenizer.*`` metadata (plain Python values, keys as in the file).

    Supports ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: SmolLM2, Llama 3, Qwen).
    Control tokens become special added tokens and user-defined ones plain added tokens,
    so ids match transformers' tokenizer for the same file.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}; supported: 'gpt2' (byte-level BPE)")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [])
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_chars = _bytes_to_unicode()
    vocab = {
        tok if set(tok) <= alphabet else "".join(byte_chars[b] for b in tok.encode("utf-8")): i
        for i, tok in enumerate(tokens)
    }
    backend = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)  # type: ignore[arg-type]
    )
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", False))
    split = _GGUF_SPLITS.get(str(metadata.get("tokenizer.ggml.pre")))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    # A "control" token outside the byte alphabet is a llama.cpp mislabel; adding it would grow the vocab.
    control = [
        AddedToken(tok, special=True, normalized=False)
        for tok, t in zip(tokens, types, strict=False)
        if t == _GGUF_CONTROL and set(tok) <= alphabet
    ]
    backend.add_special_tokens(control)
    user = [
        AddedToken(tok, special=False, normalized=False)
        for tok, t in zip(tokens, types, strict=False)
        if t == _GGUF_USER_DEFINED and tok in vocab
    ]
    if user:
        backend.add_tokens(user)

    def token_at(key: str) -> str | None:
        idx = metadata.get(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    eot_id = metadata.get("tokenizer.ggml.eot_token_id")
    special = {
        "bos_token": token_at("tokenizer.ggml.bos_token_id"),
        "eos_token": token_at("tokenizer.ggml.eos_token_id"),
        "unk_token": token_at("tokenizer.ggml.unknown_token_id"),
        "pad_token": token_at("tokenizer.ggml.padding_token_id"),
    }
    return TokenizerParts(
        backend,
        chat_template=metadata.get("tokenizer.chat_template"),
        bos_token=special["bos_token"],
        eos_token=special["eos_token"],
        extra_eos_token_ids=tuple(int(i) for i in (eos_id, eot_id) if i is not None),
        special_tokens={k: v for k, v in special.items() if v is not None},
        add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
    )


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
