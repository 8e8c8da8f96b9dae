"""How long to keep a program's KV pinned after a call: learned per tool from observed durations.

The rule follows Continuum's cost-benefit: pinning for ``T`` seconds saves a re-prefill with
probability ``P(tool returns within T)`` and holds the blocks for ``E[min(duration, T)]``
seconds. With the value of one saved re-prefill expressed as seconds of holding
(``break_even_s``, both costs scale with the context size so it cancels), the TTL is the
``T`` that maximizes ``P(d <= T) * break_even_s - E[min(d, T)]``; 0 when nothing beats not
pinning. Without enough history a small default applies.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

ANY_TOOL = "*"
"""Key pooling every gap of a class (used before the call's tools are known)."""
NO_TOOL = ""
"""The gap after a response that asked for no tool (the client's own work)."""


class ToolDurations:
    """Recent observed durations per (class, tool), a bounded window each."""

    def __init__(self, window: int = 256) -> None:
        self._window = window
        self._samples: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def observe(self, class_name: str, tools: Iterable[str], seconds: float) -> None:
        """Record one gap for each tool (parallel tool calls share one gap) and the class pool."""
        if seconds < 0:
            return
        for tool in set(tools) or {NO_TOOL}:
            self._samples[(class_name, tool)].append(seconds)
        self._samples[(class_name, ANY_TOOL)].append(seconds)

    def samples(self, class_name: str, tool: str) -> Sequence[float]:
        return tuple(self._samples.get((class_name, tool), ()))

    def count(self, class_name: str, tool: str) -> int:
        found = self._samples.get((class_name, tool))
        return len(found) if found else 0


class RetentionPolicy:
    """TTL for a call's pin from a tool's observed durations."""

    def __init__(self, default_s: float, max_s: float, break_even_s: float, min_samples: int = 3) -> None:
        self.default_s = min(default_s, max_s)
        self.max_s = max_s
        self.break_even_s = break_even_s
        self.min_samples = min_samples

    def ttl(self, samples: Sequence[float]) -> float:
        """Seconds to pin; the default without ``min_samples`` observations."""
        if len(samples) < self.min_samples:
            return self.default_s
        ordered = sorted(samples)
        n = len(ordered)
        best_t, best_value = 0.0, 0.0
        below = 0.0  # sum of durations <= T so far
        for i, t in enumerate(ordered):
            if t > self.max_s:
                break
            below += t
            returned = i + 1
            expected_hold = (below + t * (n - returned)) / n
            value = returned / n * self.break_even_s - expected_hold
            if value > best_value:
                best_t, best_value = t, value
        return best_t

    def ttl_for_tools(self, durations: ToolDurations, class_name: str, tools: Iterable[str]) -> float | None:
        """Longest TTL among ``tools`` that have enough history; None when none has."""
        known = [durations.samples(class_name, t) for t in set(tools) or {NO_TOOL}]
        known = [s for s in known if len(s) >= self.min_samples]
        if not known:
            return None
        return max(self.ttl(s) for s in known)

    def remaining(self, samples: Sequence[float], elapsed: float) -> float:
        """Expected seconds until a tool that has run ``elapsed`` seconds returns: the mean
        excess of the observed durations beyond it; a tool that outlived every observation
        is expected to run as long again (heavy tails); the default without history."""
        if len(samples) < self.min_samples:
            return max(0.0, self.default_s - elapsed)
        longer = [d for d in samples if d > elapsed]
        if not longer:
            return elapsed
        return sum(longer) / len(longer) - elapsed
