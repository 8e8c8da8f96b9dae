"""What a step costs with more query rows, measured online on this machine (torch-free).

Verifying ``k`` drafted tokens adds ``k`` query rows to a decode step. How much that costs
depends on the device, the model and the kernels (on 2 CPU cores with the bundled model one
extra row cost 1.19x a decode, eight cost 2.36x, sixteen 5.4x), so the engine times its own
decode steps and keeps, per number of query rows, the median of the recent timings. Row counts
not measured yet are estimated from the nearest measured one with a linear prior.
"""

from __future__ import annotations

import statistics
from collections import deque

MIN_SAMPLES = 3
"""Timings of a row count needed before they replace the prior (one slow outlier must not
stop a draft size from ever being tried again)."""
WINDOW = 25
"""Recent timings kept per row count (the median of them is the estimate)."""


class StepCostModel:
    """Median wall time of decode-only steps by their number of query rows (decodes plus drafted tokens)."""

    def __init__(self, prior_token_cost: float) -> None:
        """``prior_token_cost``: the assumed cost of one more query row relative to a one-row step,
        used until measurements replace it."""
        self.prior_token_cost = prior_token_cost
        self._samples: dict[int, deque[float]] = {}
        self._median: dict[int, float] = {}
        """Estimate per row count with at least MIN_SAMPLES timings."""

    def observe(self, rows: int, seconds: float) -> None:
        """A decode-only step of ``rows`` query rows took ``seconds`` (engine loop included)."""
        if rows < 1 or seconds <= 0.0:
            return
        window = self._samples.setdefault(rows, deque(maxlen=WINDOW))
        window.append(seconds)
        if len(window) >= MIN_SAMPLES:
            self._median[rows] = statistics.median(window)

    def measured(self) -> dict[int, float]:
        """Median step seconds per row count with enough timings, by row count."""
        return dict(sorted(self._median.items()))

    def relative(self, rows: int, extra: int) -> float:
        """Cost of a step of ``rows + extra`` query rows relative to one of ``rows`` (>= 1)."""
        if extra <= 0:
            return 1.0
        return max(1.0, self._estimate(rows + extra) / self._estimate(rows))

    def _prior(self, rows: int) -> float:
        return 1.0 + self.prior_token_cost * (rows - 1)

    def _estimate(self, rows: int) -> float:
        measured = self._median.get(rows)
        if measured is not None:
            return measured
        if not self._median:
            return self._prior(rows)
        # scale the prior from the nearest measured row count (the smaller one on a tie)
        nearest = min(self._median, key=lambda r: (abs(r - rows), r))
        return self._median[nearest] * self._prior(rows) / self._prior(nearest)
