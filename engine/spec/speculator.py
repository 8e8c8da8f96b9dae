"""Which sequences draft this step and how much (torch-free): the engine's speculation policy.

The drafter proposes up to ``max_draft_tokens`` nodes; the policy keeps the first ``k`` of
them, the ``k`` that maximises expected tokens per unit of step time. Expected tokens come
from the per-token acceptance learned for the draft's source (engine-wide and per request,
:mod:`~shoal.engine.spec.acceptance`): ``1 + a + ... + a^k``. Step time comes from this
machine's measured decode steps (:mod:`~shoal.engine.spec.step_cost`): the cost of ``k`` more
query rows relative to the step without them. When no ``k`` pays, the request drafts nothing
and backs off (FASER): it sits out 1, 2, 4 ... 16 steps between single-token probes, so text
the drafter cannot predict costs almost nothing. Past ``max_batch_size`` decoding sequences
the step is compute-bound and nobody drafts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from shoal.engine.scheduler import ScheduledSequence
from shoal.engine.sequence import Sequence, SequenceStatus
from shoal.engine.spec import trie_drafter  # noqa: F401 - registers the trie drafter
from shoal.engine.spec.acceptance import AcceptanceModel
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import create_drafter
from shoal.engine.spec.step_cost import StepCostModel
from shoal.engine.spec.token_tree import DraftTree

TOKEN_COST = {"cpu": 0.2, "cuda": 0.02}
"""Prior cost of one more query row in a step, relative to a one-row decode, by device (the
measured step times replace it as they come in)."""
MAX_BACKOFF = 16
"""Most steps a request whose drafts do not pay sits out between probes."""


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


def expected_tokens(acceptance: float, size: int) -> float:
    """Tokens a sequence emits from a ``size``-token draft: the accepted run plus the model's own."""
    return sum(acceptance**i for i in range(size + 1))


def best_draft_size(acceptance: float, cost: Callable[[int], float], max_tokens: int, others: float = 0.0) -> int:
    """The draft length with the most expected tokens per unit of step cost (0: drafting does not pay).

    ``cost(k)``: the step's time with ``k`` drafted tokens relative to without; ``others``:
    tokens the rest of the step emits anyway (the other decoding sequences).
    """
    best, best_gain = 0, others + 1.0
    expected = reach = 1.0
    for k in range(1, max_tokens + 1):
        reach *= acceptance
        expected += reach
        gain = (others + expected) / cost(k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best


class Speculator:
    def __init__(
        self,
        config: SpeculationConfig,
        token_cost: float = TOKEN_COST["cpu"],
        step_cost: StepCostModel | None = None,
        max_step_rows: int | None = None,
    ) -> None:
        """``token_cost``: the prior of the step cost model (``step_cost``, new when None).

        ``max_step_rows``: most query rows a decode step may reach with its drafts (None: no cap).
        The engine sets it when its model computes up to that many rows with a kernel whose
        every row is independent of the others (quantized weights on CPU): past it a GEMM with
        other rounding would run, and a verified token could differ in its last bit from the
        one a plain decode computes.
        """
        self.config = config
        self.max_step_rows = max_step_rows
        self.drafter = create_drafter(config)
        self.step_cost = step_cost if step_cost is not None else StepCostModel(token_cost)
        self.acceptance = AcceptanceModel()
        self.stats = SpecStats()
        self._backoff: dict[int, int] = {}
        """Current sit-out length of requests whose drafts do not pay (doubling up to MAX_BACKOFF)."""
        self._cooldown: dict[int, int] = {}
        """Steps a request still sits out."""
        self._probe_due: set[int] = set()
        """Requests that sat out and may now verify a single-token probe."""

    def propose(self, running: list[Sequence], max_model_len: int) -> None:
        """Set ``seq.draft`` on the running decodes that should speculate this step (None elsewhere)."""
        decodes = []
        for seq in running:
            seq.draft = None
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1:
                decodes.append(seq)
        if len(decodes) > self.config.max_batch_size:
            return
        rows = len(decodes)
        others = float(len(decodes) - 1)
        for seq in decodes:
            if not self.eligible(seq) or self._sits_out(seq):
                continue
            room = max_model_len - len(seq)
            if seq.params.max_tokens is not None:
                room = min(room, seq.params.max_tokens - seq.num_output_tokens - 1)
            budget = min(self.config.max_draft_tokens, room)
            if budget < 1:
                continue
            draft = self.drafter.propose(seq, budget, min(self.config.max_depth, budget))
            if draft is None:
                continue
            acceptance = self.acceptance.estimate(seq.seq_id, draft.source)
            size = best_draft_size(acceptance, partial(self.step_cost.relative, rows), len(draft), others)
            size = self._back_off(seq) if size == 0 else self._pays(seq, size)
            if self.max_step_rows is not None:
                size = min(size, max(0, self.max_step_rows - rows))
            if size:
                seq.draft = draft.truncated(size)
                rows += size
                others += expected_tokens(acceptance, size) - 1.0

    def _sits_out(self, seq: Sequence) -> bool:
        left = self._cooldown.get(seq.seq_id, 0)
        if left:
            self._cooldown[seq.seq_id] = left - 1
        return left > 0

    def _back_off(self, seq: Sequence) -> int:
        """No draft size pays for ``seq``: 1 if a probe is due, else 0 and a longer sit-out."""
        sid = seq.seq_id
        if sid in self._probe_due:
            self._probe_due.discard(sid)
            return 1
        wait = min(MAX_BACKOFF, 2 * self._backoff.get(sid, 0) or 1)
        self._backoff[sid] = self._cooldown[sid] = wait
        self._probe_due.add(sid)
        return 0

    def _pays(self, seq: Sequence, size: int) -> int:
        self._backoff.pop(seq.seq_id, None)
        self._probe_due.discard(seq.seq_id)
        return size

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

    def observe_step(self, scheduled: list[ScheduledSequence], seconds: float) -> None:
        """A step of ``scheduled`` took ``seconds``: decode-only steps teach the step cost model."""
        if not scheduled or any(item.num_tokens != 1 for item in scheduled):
            return
        rows = sum(1 + (len(item.draft) if item.draft is not None else 0) for item in scheduled)
        self.step_cost.observe(rows, seconds)

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
        # tokens tried on the path: the accepted ones and the one rejected where the walk
        # stopped, unless it reached the draft's deepest level
        tried = num_accepted + (1 if num_accepted < max(draft.depths) else 0)
        self.acceptance.update(seq.seq_id, draft.source, num_accepted, tried)

    def release(self, seq: Sequence) -> None:
        self.drafter.release(seq)
        self.acceptance.release(seq.seq_id)
        for state in (self._backoff, self._cooldown):
            state.pop(seq.seq_id, None)
        self._probe_due.discard(seq.seq_id)
