"""How likely a drafted token is to be accepted, learned per draft source (torch-free).

A draft's source says how it was found (``own:4``: the request's own text matched on its last
4 tokens; ``global:2``: the shared trie matched on 2). Copying a given file and guessing from
other requests' outputs behave very differently, so each source has its own per-token
acceptance: engine-wide from recent traffic (Aurora: the speculator keeps learning), and per
request as a fast average started from the engine-wide figure (FASER: per-request adaptation).
"""

from __future__ import annotations

from dataclasses import dataclass

PRIOR = 0.5
"""Per-token acceptance assumed for a source nothing has been learned about."""
PRIOR_WEIGHT = 2.0
"""Observations the prior is worth against measured ones."""
DECAY = 0.98
"""Weight kept by older engine-wide observations at each new one (about the last 50 drafts count)."""
REQUEST_EMA = 0.3
"""Weight of a request's latest draft in its own average."""
_ALL = "\0all"
"""Source key of a request's average over all its drafts."""


@dataclass
class _Decayed:
    accepted: float = 0.0
    tried: float = 0.0

    @property
    def rate(self) -> float:
        return (self.accepted + PRIOR * PRIOR_WEIGHT) / (self.tried + PRIOR_WEIGHT)


class AcceptanceModel:
    """Per-token acceptance estimates by draft source, engine-wide and per request."""

    def __init__(self) -> None:
        self._engine: dict[str, _Decayed] = {}
        self._request: dict[tuple[int, str], float] = {}

    def estimate(self, seq_id: int, source: str) -> float:
        """Chance that each next drafted token from ``source`` is accepted for ``seq_id``.

        The request's own figure for the source once it has one; before that the engine's figure,
        or, for a source the engine has not seen yet, the request's figure over all its sources
        (open chat whose 1-token matches keep missing need not try 2-, 3- and 4-token ones anew).
        """
        own = self._request.get((seq_id, source))
        if own is not None:
            return own
        overall = self._request.get((seq_id, _ALL))
        if source not in self._engine and overall is not None:
            return overall
        return self.engine_rate(source)

    def engine_rate(self, source: str) -> float:
        stats = self._engine.get(source)
        return stats.rate if stats is not None else PRIOR

    def update(self, seq_id: int, source: str, accepted: int, tried: int) -> None:
        """``accepted`` of the ``tried`` drafted tokens on the verified path were accepted."""
        if tried <= 0:
            return
        start = self.estimate(seq_id, source)
        for key in ((seq_id, source), (seq_id, _ALL)):
            prev = self._request.get(key, start)
            self._request[key] = (1 - REQUEST_EMA) * prev + REQUEST_EMA * accepted / tried
        stats = self._engine.setdefault(source, _Decayed())
        stats.accepted = stats.accepted * DECAY + accepted
        stats.tried = stats.tried * DECAY + tried

    def release(self, seq_id: int) -> None:
        for key in [k for k in self._request if k[0] == seq_id]:
            del self._request[key]
