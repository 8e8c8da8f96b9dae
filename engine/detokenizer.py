"""Incremental detokenization: token ids in, text deltas out (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence

from shoal.engine.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas.

    Decodes only a small window: ``ids[prefix_offset:]`` against ``ids[prefix_offset:read_offset]``,
    so a token's text is judged in context (byte-level spaces, sentencepiece's leading-space
    stripping). Text ending in U+FFFD is an incomplete UTF-8 sequence: it is held back until the
    bytes that complete it arrive (or until :meth:`flush`).
    """

    _INITIAL_WINDOW = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids)
        self._read_offset = len(self._ids)
        self._prefix_offset = max(self._read_offset - self._INITIAL_WINDOW, 0)
        self.text = ""
        """All text emitted so far (the sum of the deltas)."""

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly empty)."""
        self._ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete UTF-8 tail at the end of the stream)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        new_text = decode(self._ids[self._prefix_offset :], self._skip)
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta
