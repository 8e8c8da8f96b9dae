"""Routes: client-facing model names mapped to pools (weighted splits, prompt-content rules)."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, model_validator

from shoal.router.config_base import StrictModel as _Strict


class SplitTarget(_Strict):
    """One pool of a weighted split."""

    pool: str
    """Target pool name."""
    weight: float = Field(gt=0)
    """Relative share of requests (weights need not sum to anything)."""


class RouteRule(_Strict):
    """Send a request to ``pool`` when its prompt text matches. Keywords and regex are OR-ed."""

    keywords: list[str] = Field(default_factory=list)
    """Case-insensitive substrings of the prompt (all messages' text, or the completion prompt)."""
    regex: str | None = None
    """Python regular expression searched in the prompt text."""
    pool: str
    """Pool for matching requests."""

    @model_validator(mode="after")
    def _check(self) -> RouteRule:
        if not self.keywords and self.regex is None:
            raise ValueError("a rule needs 'keywords' or 'regex'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from exc
        return self


class RouteConfig(_Strict):
    """Maps a client-facing model name to pools. Rules are tried in order, first match wins;
    otherwise ``pool`` or a weighted ``split`` applies (exactly one of the two)."""

    model: str = Field(min_length=1)
    """Model name clients send."""
    aliases: list[str] = Field(default_factory=list)
    """Other names for this route."""
    pool: str | None = None
    """Default pool."""
    split: list[SplitTarget] | None = None
    """Weighted split across pools (sticky per program/session id when the request has one)."""
    rules: list[RouteRule] = Field(default_factory=list)
    """Prompt-content rules, tried before the default."""

    # The Router CRD's admission rule for _target (shoal.crds.cel reads it; this package cannot
    # import shoal.crds, so a plain mapping).
    CEL_RULES: ClassVar[tuple[dict[str, str], ...]] = (
        {
            "rule": "has(self.pool) != has(self.split) && (!has(self.split) || size(self.split) > 0)",
            "message": "a route needs exactly one of pool or a non-empty split",
            "reason": "RoutesInvalid",
        },
    )

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if (self.pool is None) == (self.split is None):
            raise ValueError(f"route {self.model!r} needs exactly one of 'pool' or 'split'")
        if self.split is not None and not self.split:
            raise ValueError(f"route {self.model!r}: split is empty")
        return self
