"""Compiles grammars for one tokenizer, caches them by grammar text, hands a matcher per sequence.

Compilation runs where it is first asked for: the HTTP server compiles in its tokenizer
threads at admission (a bad grammar is a 400 there), so by the time the engine thread
adds the request the grammar is cached and a matcher is a cheap copy.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable

import llguidance

from shoal.engine.sampling_params import StructuredOutput
from shoal.engine.structured.errors import GrammarError
from shoal.engine.structured.grammar import grammar_text
from shoal.engine.tokenizer import Tokenizer

logger = logging.getLogger("shoal.engine.structured")

DEFAULT_CACHE_SIZE = 512
"""Compiled grammars kept (least recently used dropped first)."""


class GrammarCompiler:
    """Thread-safe: the server's threads compile, the engine thread takes matchers."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_token_ids: Iterable[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self.hits = 0
        self.misses = 0

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """The llguidance view of the engine's tokenizer (built once, on first use)."""
        with self._lock:
            if self._ll_tokenizer is None:
                if not self._eos:
                    raise GrammarError("structured outputs need a model with an end-of-sequence token")
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self._tokenizer.backend.to_str(), n_vocab=self._vocab_size, eos_token=self._eos
                )
            return self._ll_tokenizer

    def compile(self, spec: StructuredOutput) -> llguidance.LLMatcher:
        """The compiled start state of ``spec`` (cached); raises :class:`GrammarError`."""
        key = f"{spec.kind}\0{spec.value}"
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar_text(spec), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"cannot compile the {spec.kind.replace('_', ' ')}: {matcher.get_error()}")
        with self._lock:
            self.misses += 1
            self._cache[key] = matcher
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return matcher

    def matcher(self, spec: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence."""
        return self.compile(spec).deep_copy()


def advance(matcher: llguidance.LLMatcher, token_id: int) -> bool:
    """Feed one accepted token; False when the grammar rejects it (the matcher is then unusable)."""
    ok = matcher.consume_token(token_id)
    if not ok:
        logger.error("grammar rejected token %d: %s", token_id, matcher.get_error())
    return ok
