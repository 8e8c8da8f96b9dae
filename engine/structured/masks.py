"""Token masks of the constrained rows of a batch, applied to the logits before sampling.

The bitmasks are computed on the CPU by llguidance (all rows in parallel, GIL released)
in a background thread started before the model's forward pass, so on a GPU the mask
work overlaps the forward; :meth:`PendingMasks.apply` waits for it and masks the logits.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import torch

_BITS = 32


@dataclass
class PendingMasks:
    """Masks being computed for one step: logits row ``rows[i]`` gets ``bitmask[which[i]]``."""

    rows: list[int]
    which: list[int]
    bitmask: torch.Tensor
    done: Future[None]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with every token the grammar forbids set to -inf (a new tensor)."""
        self.done.result()
        vocab = logits.shape[-1]
        device = logits.device
        shifts = torch.arange(_BITS, dtype=torch.int32, device=device)
        words = self.bitmask.to(device, non_blocking=True)
        allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)
        if allowed.shape[1] < vocab:  # tokens past the mask's width are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
        allowed = allowed[:, :vocab]
        if self.which != list(range(allowed.shape[0])):
            allowed = allowed[torch.tensor(self.which, dtype=torch.long, device=device)]
        logits = logits.float()
        blocked = torch.tensor(float("-inf"), device=device)
        if len(self.rows) == logits.shape[0]:
            return torch.where(allowed, logits, blocked)
        index = torch.tensor(self.rows, dtype=torch.long, device=device)
        logits = logits.clone()
        logits[index] = torch.where(allowed, logits[index], blocked)
        return logits


class GrammarMasks:
    """Per model runner: the mask buffer and the thread that fills it."""

    def __init__(self, vocab_size: int) -> None:
        self._words = (vocab_size + _BITS - 1) // _BITS
        self._executor = llguidance.LLExecutor()
        self._thread = ThreadPoolExecutor(1, "shoal-grammar-mask")

    def start(self, matchers: list[llguidance.LLMatcher | None], num_rows: list[int]) -> PendingMasks | None:
        """Begin the masks of one step; None when no row is constrained.

        ``matchers[i]`` constrains the ``num_rows[i]`` consecutive logits rows of sequence
        ``i`` (several when an n>1 request samples its first tokens from one row).
        """
        jobs: list[tuple[llguidance.LLMatcher, int]] = []
        rows: list[int] = []
        which: list[int] = []
        row = 0
        for matcher, count in zip(matchers, num_rows, strict=True):
            if matcher is not None:
                rows.extend(range(row, row + count))
                which.extend([len(jobs)] * count)
                jobs.append((matcher, len(jobs)))
            row += count
        if not jobs:
            return None
        bitmask = torch.empty((len(jobs), self._words), dtype=torch.int32)

        def fill() -> None:
            self._executor.unsafe_compute_mask_ptr(jobs, bitmask.data_ptr(), self._words * 4, len(jobs))

        return PendingMasks(rows, which, bitmask, self._thread.submit(fill))
