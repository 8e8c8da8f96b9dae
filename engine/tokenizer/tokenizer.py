"""The tokenizer of one model: encoding, decoding, special tokens and chat rendering.

Torch-free on purpose: the router imports this package to tokenize exactly like the engine
(it rebuilds the engine's tokenizer from :meth:`Tokenizer.to_payload`). Only ``tokenizers``,
``jinja2`` and the standard library are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from shoal.engine.chat_template import compile_template
from shoal.engine.chat_tokens import encode_chat_messages
from shoal.engine.tokenizer.gguf import read_gguf_metadata
from shoal.engine.tokenizer.hf_folder import read_hf_folder
from shoal.engine.tokenizer.parts import TokenizerParts
from shoal.engine.tokenizer.payload import make_payload, read_payload


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
    def from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        return cls(
            parts.backend,
            chat_template=parts.chat_template,
            bos_token=parts.bos_token,
            eos_token=parts.eos_token,
            extra_eos_token_ids=parts.extra_eos_token_ids,
            special_tokens=parts.special_tokens,
            add_bos_token=parts.add_bos_token,
            add_eos_token=parts.add_eos_token,
        )

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> Tokenizer:
        """Load a Hugging Face model folder (see :func:`~shoal.engine.tokenizer.hf_folder.read_hf_folder`)."""
        return cls.from_parts(read_hf_folder(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF ``tokenizer.*`` metadata (see :func:`~shoal.engine.tokenizer.gguf.read_gguf_metadata`)."""
        return cls.from_parts(read_gguf_metadata(metadata))

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able description from which :meth:`from_payload` rebuilds this exact tokenizer."""
        return make_payload(
            self._backend, self.chat_template, self.special_tokens, self.bos_token, self.eos_token, self.eos_token_ids
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Tokenizer:
        return cls.from_parts(read_payload(payload))

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


_GIL_FREE_CHARS = 16 * 1024


def _encode(backend: HFTokenizer, text: str, add_special_tokens: bool) -> list[int]:
    if len(text) > _GIL_FREE_CHARS:
        # encode_batch releases the GIL while it works (encode does not): a long prompt being
        # tokenized in a worker thread then does not stall the event loop
        return list(backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)
    return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)


def _normalize_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if v is not None}
    content = out.get("content")
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        if len(texts) != len(content):
            raise ValueError("only text content parts are supported in chat messages")
        out["content"] = "\n".join(str(t) for t in texts)
    return out
