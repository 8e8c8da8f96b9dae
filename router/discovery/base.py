"""The discovery interface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class EndpointSource(Protocol):
    """Yields the full set of endpoint base URLs each time it changes (the first one at once)."""

    def watch(self) -> AsyncIterator[frozenset[str]]:
        """An endless stream of membership snapshots; cancel the consuming task to stop."""
        ...
