"""CUDA graphs for decode steps: one captured ``model.forward`` per batch-size bucket.

A decode step launches a few hundred small kernels whose CPU launch cost can exceed the GPU
time at small batches; replaying a captured graph launches them all at once. Each bucket's
graph reads fixed (static) input buffers, so a step copies its real batch into them, pads it
up to the bucket and replays:

- padding tokens get slot -1 (``store_kv`` skips them), context length 1 and block 0 (a valid
  block id, so attention reads one harmless key);
- ``max_q_len`` is 1 and ``max_context_len`` is the static bound ``max_blocks * block_size``;
  the Triton paged-attention grid depends only on shapes, never on these per-step values.

Requires a backend whose ops never synchronise with the host (the ``triton`` backend; the
torch reference's ``store_kv`` does) and the whole forward to run on one CUDA device.
With ``use_graphs=False`` (any device) the same padded static batch runs eagerly: the CPU
tests check the padding rules that way.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

import torch

from shoal.engine.attention_context import AttentionContext
from shoal.engine.kernels.backend import KernelBackend


class DecodeModel(Protocol):
    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor: ...


def default_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, 16, 32, then every 32 up to ``max_batch_size`` (always included)."""
    buckets = [b for b in (1, 2, 4, 8, 16) if b < max_batch_size]
    buckets += list(range(32, max_batch_size, 32))
    return [*buckets, max_batch_size]


class DecodeCudaGraphs:
    """Graphs of ``model(input_ids, positions, ctx)`` for pure-decode batches (1 token per sequence).

    The engine captures every bucket at start-up with :meth:`capture_all`; a bucket not captured
    yet is captured the first time a batch needs it. Every graph shares one memory pool. Only one graph's output is valid
    at a time: :meth:`run` returns a view that the next replay overwrites.
    """

    def __init__(
        self,
        model: DecodeModel,
        ops: KernelBackend,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        max_batch_size: int,
        max_blocks_per_seq: int,
        buckets: list[int] | None = None,
        use_graphs: bool = True,
    ) -> None:
        device = kv_caches[0][0].device
        if use_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need the KV cache on a CUDA device")
        self.use_graphs = use_graphs
        self.model = model
        self.ops = ops
        self.kv_caches = kv_caches
        self.block_size = kv_caches[0][0].shape[1]
        self.max_blocks_per_seq = max_blocks_per_seq
        self.buckets = sorted(buckets or default_buckets(max_batch_size))
        self.max_batch_size = self.buckets[-1]
        n = self.max_batch_size
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._pool: Any = None  # the graphs' shared memory pool handle

    def supports(self, batch_size: int, num_blocks: int) -> bool:
        """Whether a decode batch of ``batch_size`` whose longest block table has ``num_blocks`` fits."""
        return 0 < batch_size <= self.max_batch_size and num_blocks <= self.max_blocks_per_seq

    def bucket_for(self, batch_size: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, batch_size)]

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states ``[B, hidden]`` of one decode step (inputs on any device; B = len(input_ids))."""
        batch = input_ids.shape[0]
        width = block_tables.shape[1]
        assert self.supports(batch, width), (batch, width)
        bucket = self.bucket_for(batch)
        if self.use_graphs and bucket not in self._graphs:
            self._capture(bucket)
        self._pad(batch, bucket)
        self.input_ids[:batch].copy_(input_ids, non_blocking=True)
        self.positions[:batch].copy_(positions, non_blocking=True)
        self.slot_mapping[:batch].copy_(slot_mapping, non_blocking=True)
        # Columns past a sequence's blocks are never read, so stale ones need no clearing.
        self.block_tables[:batch, :width].copy_(block_tables, non_blocking=True)
        self.context_lens[:batch].copy_(context_lens, non_blocking=True)
        if not self.use_graphs:
            return self.model(self.input_ids[:bucket], self.positions[:bucket], self._context(bucket))[:batch]
        self._graphs[bucket].replay()
        return self._outputs[bucket][:batch]

    def capture_all(self) -> None:
        """Capture every bucket now, largest first (the smaller graphs then fit in its pool)."""
        for bucket in reversed(self.buckets):
            if self.use_graphs and bucket not in self._graphs:
                self._capture(bucket)

    def _pad(self, start: int, end: int) -> None:
        if start < end:
            self.input_ids[start:end] = 0
            self.positions[start:end] = 0
            self.slot_mapping[start:end] = -1
            self.block_tables[start:end, 0] = 0
            self.context_lens[start:end] = 1

    def _context(self, batch: int) -> AttentionContext:
        return AttentionContext(
            ops=self.ops,
            kv_caches=self.kv_caches,
            slot_mapping=self.slot_mapping[:batch],
            block_tables=self.block_tables[:batch],
            cu_seqlens_q=self.cu_seqlens_q[: batch + 1],
            context_lens=self.context_lens[:batch],
            max_q_len=1,
            max_context_len=self.max_blocks_per_seq * self.block_size,
        )

    def _capture(self, bucket: int) -> None:
        # All-padding inputs: the warm-up (Triton compiles, lazy caches) and the capture write nothing.
        self._pad(0, bucket)
        ctx = self._context(bucket)
        args = (self.input_ids[:bucket], self.positions[:bucket], ctx)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.model(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.model(*args)
        self._pool = graph.pool()
        self._graphs[bucket] = graph
        self._outputs[bucket] = out
