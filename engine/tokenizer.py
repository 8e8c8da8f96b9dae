"""Tokenizer, chat templates and incremental detokenization.

Torch-free on purpose: the router imports this module to tokenize exactly like the engine
(it rebuilds the engine's tokenizer from :meth:`Tokenizer.to_payload`). Only ``tokenizers``,
``jinja2`` and the standard library are used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from shoal.engine.chat_template import compile_template
from shoal.engine.chat_tokens import encode_chat_messages

PAYLOAD_VERSION = 1

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


class Tokenizer:
    """A ``tokenizers`` tokenizer plus the special tokens and chat template of one model."""

    def __init__(
        self,
        backend: HFTokenizer,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        special_tokens: Mapping[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
    ) -> None:
        self._backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_tokens: dict[str, str] = {
            k: v for k, v in (special_tokens or {}).items() if isinstance(v, str)
        }
        if bos_token is not None:
            self.special_tokens["bos_token"] = bos_token
        if eos_token is not None:
            self.special_tokens["eos_token"] = eos_token
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.bos_token_id: int | None = backend.token_to_id(bos_token) if bos_token is not None else None
        eos_ids = [backend.token_to_id(eos_token)] if eos_token is not None else []
        self.eos_token_ids: frozenset[int] = frozenset(
            i for i in [*eos_ids, *extra_eos_token_ids] if i is not None
        )
        if add_bos_token is not None or add_eos_token is not None:
            self._install_post_processor(bool(add_bos_token), bool(add_eos_token))
        self._text_backend: HFTokenizer | None = None
        self._max_token_bytes: int | None = None
        self._special_strings: list[str] | None = None

    # construction ---------------------------------------------------------------------------------

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``/``.json``).

        Extra end-of-sequence ids come from ``generation_config.json`` and ``config.json``.
        Raises ``FileNotFoundError`` when ``tokenizer.json`` is absent and ``ValueError`` when broken.
        """
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        try:
            backend = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:
            raise ValueError(f"cannot parse {tok_file}: {exc}") from exc
        cfg = _read_json(folder / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif template is None and (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        special = {k: _token_content(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        extra_eos: list[int] = []
        for name in ("generation_config.json", "config.json"):
            eos = _read_json(folder / name).get("eos_token_id")
            extra_eos.extend(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return cls(
            backend,
            chat_template=template,
            bos_token=special["bos_token"],
            eos_token=special["eos_token"],
            extra_eos_token_ids=[int(e) for e in extra_eos],
            special_tokens={k: v for k, v in special.items() if v is not None},
            add_bos_token=cfg.get("add_bos_token"),
            add_eos_token=cfg.get("add_eos_token"),
        )

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF ``tokenizer.*`` metadata (plain Python values, keys as in the file).

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
        return cls(
            backend,
            chat_template=metadata.get("tokenizer.chat_template"),
            bos_token=special["bos_token"],
            eos_token=special["eos_token"],
            extra_eos_token_ids=[int(i) for i in (eos_id, eot_id) if i is not None],
            special_tokens={k: v for k, v in special.items() if v is not None},
            add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
            add_eos_token=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        )

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able description from which :meth:`from_payload` rebuilds this exact tokenizer."""
        return {
            "version": PAYLOAD_VERSION,
            "tokenizer_json": self._backend.to_str(),
            "chat_template": self.chat_template,
            "special_tokens": dict(self.special_tokens),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "eos_token_ids": sorted(self.eos_token_ids),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Tokenizer:
        if payload.get("version") != PAYLOAD_VERSION:
            raise ValueError(f"unsupported tokenizer payload version {payload.get('version')!r}")
        # The post-processor (BOS/EOS insertion) is already inside tokenizer_json.
        return cls(
            HFTokenizer.from_str(payload["tokenizer_json"]),
            chat_template=payload.get("chat_template"),
            bos_token=payload.get("bos_token"),
            eos_token=payload.get("eos_token"),
            extra_eos_token_ids=payload.get("eos_token_ids", ()),
            special_tokens=payload.get("special_tokens"),
        )

    # encoding -------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (base vocabulary plus added tokens)."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self) -> HFTokenizer:
        return self._backend

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return _encode(self._backend, text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def encode_as_text(self, text: str) -> list[int]:
        """Like ``encode(text, add_special_tokens=False)`` but special-token text stays text."""
        if self._text_backend is None:
            # a copy: the flag is per tokenizer, and other threads encode with the original
            backend = HFTokenizer.from_str(self._backend.to_str())
            backend.encode_special_tokens = True
            self._text_backend = backend
        return _encode(self._text_backend, text, False)

    @property
    def special_token_strings(self) -> list[str]:
        """The text of every special (control) token."""
        if self._special_strings is None:
            decoder = self._backend.get_added_tokens_decoder()
            self._special_strings = [t.content for t in decoder.values() if t.special]
        return self._special_strings

    @property
    def max_token_bytes(self) -> int:
        """UTF-8 length of the longest token string: no token covers more bytes of input text."""
        if self._max_token_bytes is None:
            vocab = self._backend.get_vocab(with_added_tokens=True)
            self._max_token_bytes = max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1)
        return self._max_token_bytes

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    # chat -------------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` with the model's jinja chat template (HF semantics).

        Text-part lists (``[{"type": "text", "text": ...}, ...]``) are joined into one string;
        keys whose value is None are dropped. Raises ValueError when the model has no template
        or the template rejects the conversation.
        """
        if not self.chat_template:
            raise ValueError("this model has no chat template; send a plain prompt (completions API) instead")
        template = compile_template(self.chat_template)
        context = {**self.special_tokens, **kwargs}
        try:
            return template.render(
                messages=[_normalize_message(m) for m in messages],
                tools=list(tools) if tools is not None else None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template error: {exc}") from exc

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered conversation (no extra BOS: the template writes its own).

        Special-token text inside message contents is encoded as text (no forged turns).
        """
        return encode_chat_messages(
            messages,
            lambda msgs: self.apply_chat_template(msgs, tools, add_generation_prompt, **kwargs),
            lambda text: self.encode(text, add_special_tokens=False),
            self.encode_as_text,
            self.special_token_strings,
            tools,
        )

    # internals ------------------------------------------------------------------------------------

    def _install_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        bos, eos = self.bos_token, self.eos_token
        use_bos = add_bos and bos is not None and self.bos_token_id is not None
        eos_id = self._backend.token_to_id(eos) if eos is not None else None
        use_eos = add_eos and eos_id is not None
        single = ([f"{bos}:0"] if use_bos else []) + ["$A:0"] + ([f"{eos}:0"] if use_eos else [])
        pair = single + ([f"{bos}:1"] if use_bos else []) + ["$B:1"] + ([f"{eos}:1"] if use_eos else [])
        specials: list[tuple[str, int]] = []
        if use_bos:
            specials.append((str(bos), int(self.bos_token_id)))  # type: ignore[arg-type]
        if use_eos:
            specials.append((str(eos), int(eos_id)))  # type: ignore[arg-type]
        self._backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )


# helpers ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


_GIL_FREE_CHARS = 16 * 1024


def _encode(backend: HFTokenizer, text: str, add_special_tokens: bool) -> list[int]:
    if len(text) > _GIL_FREE_CHARS:
        # encode_batch releases the GIL while it works (encode does not): a long prompt being
        # tokenized in a worker thread then does not stall the event loop
        return list(backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)
    return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


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


def _normalize_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if v is not None}
    content = out.get("content")
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        if len(texts) != len(content):
            raise ValueError("only text content parts are supported in chat messages")
        out["content"] = "\n".join(str(t) for t in texts)
    return out
