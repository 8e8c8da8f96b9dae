"""Which sequences draft this step and how much (torch-free): the engine's speculation policy.

Draft length adapts per request to its recent acceptance (FASER): from the request's
per-token acceptance rate ``a``, a draft of ``k`` tokens is expected to emit
``1 + a + ... + a^k`` tokens for a step that costs ``1 + c*k`` plain decode steps, and the ``k``
with the best ratio is drafted (``c``: the cost of one more query token in a step; on 2 CPU
cores with the bundled model a step verifying 3 drafted tokens took 1.27x a decode and one
verifying 8 took 2.67x, hence 0.2; far less on a GPU at small batch). A request whose drafts keep missing falls back to a single guessed token and drafts
ever more rarely, so verification never costs much more than the plain decode it replaces.
Past ``max_batch_size`` decoding sequences the step is compute-bound and nobody drafts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.engine.sequence import Sequence, SequenceStatus
from shoal.engine.spec import trie_drafter  # noqa: F401 - registers the trie drafter
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import create_drafter
from shoal.engine.spec.token_tree import DraftTree

_EMA = 0.5
"""Weight of the latest step in a request's acceptance average."""
_PRIOR_ACCEPTANCE = 0.6
"""Per-token acceptance assumed for a request's first draft."""
TOKEN_COST = {"cpu": 0.2, "cuda": 0.02}
"""Cost of verifying one more token in a step, relative to a plain decode step, by device."""
_MAX_COOLDOWN = 16
"""Most steps a request that keeps missing sits out between drafts."""


@dataclass
class SpecStats:
    """Cumulative counters (vLLM's spec-decode metrics are computed from these)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    """How often the i-th token of a draft path was accepted."""

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verified draft: the accepted ones plus the one the model adds."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


def best_draft_size(acceptance: float, token_cost: float, max_tokens: int) -> int:
    """The draft length with the most expected tokens per unit of step cost (0: drafting does not pay)."""
    best, best_gain = 0, 1.0
    expected = reach = 1.0
    for k in range(1, max_tokens + 1):
        reach *= acceptance
        expected += reach
        gain = expected / (1.0 + token_cost * k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best


class Speculator:
    def __init__(self, config: SpeculationConfig, token_cost: float = TOKEN_COST["cpu"]) -> None:
        self.config = config
        self.token_cost = token_cost
        self.drafter = create_drafter(config)
        self.stats = SpecStats()
        self._acceptance: dict[int, float] = {}
        self._misses: dict[int, int] = {}
        """Drafts in a row that ``seq`` accepted nothing of."""
        self._cooldown: dict[int, int] = {}
        """Steps ``seq`` sits out before drafting again (doubling with each further miss)."""

    def propose(self, running: list[Sequence], max_model_len: int) -> None:
        """Set ``seq.draft`` on the running decodes that should speculate this step (None elsewhere)."""
        decodes = []
        for seq in running:
            seq.draft = None
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1:
                decodes.append(seq)
        if len(decodes) > self.config.max_batch_size:
            return
        for seq in decodes:
            if not self.eligible(seq) or self._sits_out(seq):
                continue
            room = max_model_len - len(seq)
            if seq.params.max_tokens is not None:
                room = min(room, seq.params.max_tokens - seq.num_output_tokens - 1)
            budget = min(self.budget(seq), room)
            if budget >= 1:
                seq.draft = self.drafter.propose(seq, budget, min(self.config.max_depth, budget))

    def _sits_out(self, seq: Sequence) -> bool:
        left = self._cooldown.get(seq.seq_id, 0)
        if left:
            self._cooldown[seq.seq_id] = left - 1
        return left > 0

    def budget(self, seq: Sequence) -> int:
        """Nodes to draft for ``seq`` (at least one: a request that sat out its misses probes again)."""
        acceptance = self._acceptance.get(seq.seq_id, _PRIOR_ACCEPTANCE)
        return max(1, best_draft_size(acceptance, self.token_cost, self.config.max_draft_tokens))

    @staticmethod
    def eligible(seq: Sequence) -> bool:
        """Whether ``seq``'s sampling can be verified here.

        Not speculated: grammar-constrained outputs (their masks follow the accepted tokens
        one at a time), penalties (they depend on the tokens before each drafted one) and
        outputs still under ``min_tokens`` (EOS is banned there).
        """
        p = seq.params
        if getattr(seq, "matcher", None) is not None:
            return False
        if p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            return False
        return seq.num_output_tokens >= p.min_tokens and not seq.pending_fork

    def record(self, seq: Sequence, draft: DraftTree, num_accepted: int) -> None:
        """``num_accepted`` of ``draft``'s tokens were accepted (a path from its root)."""
        s = self.stats
        s.num_drafts += 1
        s.num_draft_tokens += len(draft)
        s.num_accepted_tokens += num_accepted
        if len(s.accepted_per_pos) < num_accepted:
            s.accepted_per_pos.extend([0] * (num_accepted - len(s.accepted_per_pos)))
        for pos in range(num_accepted):
            s.accepted_per_pos[pos] += 1
        # per-token acceptance of this draft: its accepted tokens over those tried (the one
        # rejected where the walk stopped, unless it reached the draft's deepest level)
        tried = num_accepted + (1 if num_accepted < max(draft.depths) else 0)
        rate = num_accepted / tried
        prev = self._acceptance.get(seq.seq_id, rate)
        self._acceptance[seq.seq_id] = (1 - _EMA) * prev + _EMA * rate
        if num_accepted:
            self._misses.pop(seq.seq_id, None)
            return
        # misses in a row: sit out 1, 2, 4, ... steps (at most _MAX_COOLDOWN), so text the
        # drafter cannot predict costs almost nothing
        misses = self._misses[seq.seq_id] = self._misses.get(seq.seq_id, 0) + 1
        self._cooldown[seq.seq_id] = min(_MAX_COOLDOWN, 2 ** (misses - 1))

    def release(self, seq: Sequence) -> None:
        self.drafter.release(seq)
        for state in (self._acceptance, self._misses, self._cooldown):
            state.pop(seq.seq_id, None)
