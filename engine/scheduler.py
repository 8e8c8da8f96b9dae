"""Dynamic SplitFuse scheduling (torch-free).

Each step has a token budget. Running decodes go first (one token each), then prompt
chunks fill the rest, so a long prompt is split across steps and never stalls the
decodes around it. Priority is "higher first" (engine, router and CRD agree). When
blocks run out, the lowest-priority running sequence is preempted by recompute (its blocks are freed; it re-enters the waiting queue and its
prefix is usually found again in the prefix cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.engine.block_manager import BlockManager
from shoal.engine.sequence import Sequence, SequenceStatus
from shoal.engine.spec.token_tree import DraftTree


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int
    """Token budget of one step."""
    max_num_seqs: int
    """Most sequences running at once."""
    max_model_len: int
    """Longest sequence (prompt + output) allowed."""
    priority_aging_steps: int = 64
    """A waiting sequence gains one priority level per this many steps it waits (no starvation).
    Priority is "higher first"."""
    watermark_blocks: int = 0
    """Free blocks kept back when admitting new sequences, so running decodes rarely preempt."""


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    num_tokens: int
    """Tokens computed for ``seq`` this step, starting at ``seq.num_computed_tokens``."""
    draft: DraftTree | None = None
    """Drafted tokens verified after them in the same pass (they count against the step budget)."""

    @property
    def samples(self) -> bool:
        """Whether this step completes the sequence's tokens, so a next token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == len(self.seq.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        on_finish: Callable[[Sequence], None] | None = None,
    ) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._on_finish = on_finish

    # ---- queue management -------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Add an n>1 sample: it runs on the parent's shared prompt blocks, or waits if its own do not fit."""
        if self.block_manager.fork(parent, child):
            child.status = SequenceStatus.RUNNING
            self.running.append(child)
        else:
            self.add(child)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> list[Sequence]:
        aborted = [s for s in self.waiting + self.running if s.request_id == request_id]
        for seq in aborted:
            self.finish(seq, "abort")
        return aborted

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        if seq.is_finished:
            return
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        if self._on_finish is not None and seq.block_table:
            self._on_finish(seq)
        self.block_manager.free(seq)

    # ---- the step ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSequence] = []
        preempted: list[Sequence] = []
        done: set[int] = set()
        order = sorted(self.running, key=self._running_key)

        # 1. decodes: one token each, highest priority first
        for seq in order:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens != 1 or seq.status is not SequenceStatus.RUNNING:
                continue
            if not self._make_room(seq, order, done, preempted):
                continue
            draft = self._fit_draft(seq, budget - 1)
            num_draft = len(draft) if draft is not None else 0
            self.block_manager.append_slots(seq, num_draft)
            scheduled.append(ScheduledSequence(seq, 1, draft))
            done.add(seq.seq_id)
            budget -= 1 + num_draft

        # 2. running prompts (chunks in progress, recomputed forks): blocks were allocated on admission
        for seq in order:
            if budget == 0:
                break
            if seq.seq_id in done or seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed_tokens <= 1:
                continue
            if not self.block_manager.can_append(seq):
                continue
            self.block_manager.append_slots(seq)
            num = min(seq.num_uncomputed_tokens, budget)
            scheduled.append(ScheduledSequence(seq, num))
            done.add(seq.seq_id)
            budget -= num

        # 3. admit waiting sequences in priority order; the head blocks the queue (no starvation)
        for seq in self.waiting:
            seq.waiting_steps += 1
        self.waiting.sort(key=self._waiting_key)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            watermark = self.config.watermark_blocks if self.running else 0
            if not self.block_manager.can_allocate(seq, watermark):
                break
            self.waiting.pop(0)
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num = min(seq.num_uncomputed_tokens, budget)
            scheduled.append(ScheduledSequence(seq, num))
            budget -= num
        return SchedulerOutput(scheduled, preempted)

    def postprocess(self, output: SchedulerOutput) -> None:
        """Advance computed-token counts and register newly filled blocks in the prefix cache."""
        for item in output.scheduled:
            seq = item.seq
            if seq.is_finished:
                continue
            seq.num_computed_tokens += item.num_tokens
            self.block_manager.register_computed_blocks(seq)

    def commit_draft(self, seq: Sequence, num_accepted: int) -> None:
        """After a verified draft: its accepted tokens' KV counts as computed, the rejected ones' blocks go."""
        if seq.is_finished:
            return
        seq.num_computed_tokens += num_accepted
        self.block_manager.trim(seq)
        self.block_manager.register_computed_blocks(seq)

    def append_token(self, seq: Sequence, token_id: int, eos_token_ids: frozenset[int]) -> None:
        """Add a sampled token and finish the sequence on EOS, a stop id or a length limit."""
        seq.token_ids.append(token_id)
        params = seq.params
        num_out = seq.num_output_tokens
        if num_out >= params.min_tokens:
            if not params.ignore_eos and token_id in eos_token_ids:
                self.finish(seq, "stop", None)
                return
            if token_id in params.stop_token_ids:
                self.finish(seq, "stop", token_id)
                return
        if (params.max_tokens is not None and num_out >= params.max_tokens) or len(seq) >= self.config.max_model_len:
            self.finish(seq, "length")

    # ---- helpers ----------------------------------------------------------------------
    def _fit_draft(self, seq: Sequence, budget: int) -> DraftTree | None:
        """``seq.draft`` cut to the step budget, or None when its slots would need blocks that are not free
        (a draft never preempts anyone)."""
        draft, seq.draft = seq.draft, None
        if draft is None or budget <= 0:
            return None
        draft = draft.truncated(budget)
        return draft if self.block_manager.can_append(seq, len(draft)) else None

    def _make_room(self, seq: Sequence, order: list[Sequence], done: set[int], preempted: list[Sequence]) -> bool:
        """Preempt lower-priority running sequences until ``seq`` can grow; False if ``seq`` itself went."""
        while not self.block_manager.can_append(seq):
            victim = next(
                (v for v in reversed(order) if v.seq_id not in done and v is not seq and v.status is SequenceStatus.RUNNING),
                None,
            )
            if victim is None:
                self._preempt(seq, preempted)
                return False
            self._preempt(victim, preempted)
        return True

    def _preempt(self, seq: Sequence, preempted: list[Sequence]) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(seq)
        preempted.append(seq)

    # Sort keys put the highest priority first (so they negate it), then the earliest arrival.
    def _running_key(self, seq: Sequence) -> tuple[int, float, int]:
        return (-seq.priority, seq.arrival, seq.index)

    def _waiting_key(self, seq: Sequence) -> tuple[int, float, int]:
        aged = seq.priority + seq.waiting_steps // self.config.priority_aging_steps
        # preempted sequences keep their original arrival, so they go back to the front of their class
        return (-aged, seq.arrival, seq.index)
