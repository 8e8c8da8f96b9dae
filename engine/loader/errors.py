"""The one exception model loading raises."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model spec, file or checkpoint that cannot be loaded; the message names what is wrong."""
