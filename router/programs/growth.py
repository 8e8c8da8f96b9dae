"""How big a program's context grows: learned per class from the engines' own usage.

A new program's first prompt is small (the shared system prompt plus its task), but its
context grows with every turn. Admitting new programs by their first prompt fills an engine
with programs that outgrow it a few turns later, and the scheduler must then pause programs
that have warm KV. So a new program is admitted only where there is room for what programs
of its class are observed to hold on average (the mean context over their calls), and the
programs already there that are smaller than that are expected to grow to it too.
"""

from __future__ import annotations

from collections import defaultdict, deque


class ContextSizes:
    """Recent context sizes (prompt + completion tokens of a finished call) per class."""

    def __init__(self, window: int = 512, min_samples: int = 8) -> None:
        self.min_samples = min_samples
        self._samples: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=window))
        self._sums: dict[str, int] = defaultdict(int)

    def observe(self, class_name: str, tokens: int) -> None:
        if tokens <= 0:
            return
        window = self._samples[class_name]
        if len(window) == window.maxlen:
            self._sums[class_name] -= window[0]
        window.append(tokens)
        self._sums[class_name] += tokens

    def expected(self, class_name: str) -> int:
        """The mean context of the class's calls; 0 until ``min_samples`` were seen."""
        window = self._samples.get(class_name)
        if not window or len(window) < self.min_samples:
            return 0
        return self._sums[class_name] // len(window)
