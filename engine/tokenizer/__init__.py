"""Tokenizers, torch-free (the router imports this package): :class:`Tokenizer` and where it is
read from (a Hugging Face folder, GGUF metadata, the engine's payload)."""

from shoal.engine.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
