"""Stop strings over incrementally decoded text (torch-free).

A stop string may arrive split across tokens, so the text that could still turn into
one is held back until it either completes a stop string (and is dropped) or cannot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    text: str
    """The text before the stop string."""
    stop: str


class StopChecker:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._longest = max((len(s) for s in stops), default=0)

    def find(self, text: str, new_chars: int) -> StopMatch | None:
        """The earliest stop string that ends in the last ``new_chars`` characters of ``text``."""
        if not self.stops or new_chars <= 0:
            return None
        start = max(0, len(text) - new_chars - self._longest + 1)
        best: StopMatch | None = None
        best_pos = len(text) + 1
        for stop in self.stops:
            pos = text.find(stop, start)
            if pos != -1 and pos < best_pos:
                best_pos = pos
                best = StopMatch(text[:pos], stop)
        return best

    def safe_length(self, text: str) -> int:
        """How much of ``text`` can be shown: all but a trailing prefix of some stop string."""
        if not self.stops:
            return len(text)
        for held in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-held:]
            if any(stop.startswith(tail) for stop in self.stops):
                return len(text) - held
        return len(text)
