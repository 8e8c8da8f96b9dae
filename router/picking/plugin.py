"""The three plugin interfaces. Every hook is async with one uniform shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from shoal.router.picking.types import Candidate, EndpointId, PickRequest, Scored


class Plugin:
    """Common base: a registered ``type`` name and an optional post-pick hook."""

    type_name: ClassVar[str] = ""

    @property
    def name(self) -> str:
        """Label used in metrics and timings."""
        return self.type_name

    async def on_picked(self, req: PickRequest, chosen: Candidate) -> None:
        """Called once the request is bound to ``chosen`` (e.g. to remember where a prefix went)."""


class Filter(Plugin):
    """Removes candidates that must not get the request."""

    strict: bool = True
    """If False and the filter would remove every candidate, the runner keeps its input instead
    (a soft preference, e.g. 'not saturated': better queue somewhere than fail)."""

    async def filter(self, req: PickRequest, endpoints: Sequence[Candidate]) -> list[Candidate]:
        """Return the candidates that pass, in the order given."""
        raise NotImplementedError


class Scorer(Plugin):
    """Rates candidates; higher is better."""

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        """Score per endpoint URL, meant to be in [0, 1] (the runner clamps; missing means 0)."""
        raise NotImplementedError


class Picker(Plugin):
    """Chooses one endpoint from the scored candidates."""

    async def pick(self, req: PickRequest, scored: Sequence[Scored]) -> Candidate:
        """``scored`` is never empty and is sorted by URL (a stable order on every replica)."""
        raise NotImplementedError
