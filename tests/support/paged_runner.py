"""A minimal by-hand driver of the model over a paged KV cache (tests only, no scheduler).

Each sequence gets its own contiguous run of blocks; :meth:`step` runs one packed batch in which
every sequence contributes a chunk of new tokens (a prefill chunk or a single decode token).
"""

from __future__ import annotations

from typing import Any

import torch

from shoal.engine.attention_context import AttentionContext
from shoal.engine.kernels import get_backend


class PagedRunner:
    def __init__(self, model: Any, max_seqs: int = 4, max_len: int = 256, block_size: int = 16,
                 backend: str = "torch") -> None:
        cfg = model.config
        param = next(model.parameters())
        self.model = model
        self.block_size = block_size
        self.blocks_per_seq = -(-max_len // block_size)
        num_blocks = max_seqs * self.blocks_per_seq
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=param.dtype, device=param.device),
             torch.zeros(shape, dtype=param.dtype, device=param.device))
            for _ in range(cfg.num_layers)
        ]
        self.ops = get_backend(backend, str(param.device))
        self.lens: dict[int, int] = {}

    @torch.inference_mode()
    def step(self, chunks: dict[int, list[int]]) -> torch.Tensor:
        """Run ``{seq_index: new token ids}``; return fp32 logits ``[total new tokens, vocab]``."""
        device = next(self.model.parameters()).device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu = [0]
        ctx_lens: list[int] = []
        tables: list[list[int]] = []
        for seq, new in chunks.items():
            start = self.lens.get(seq, 0)
            base = seq * self.blocks_per_seq
            for i, tok in enumerate(new):
                pos = start + i
                ids.append(tok)
                positions.append(pos)
                slots.append((base + pos // self.block_size) * self.block_size + pos % self.block_size)
            self.lens[seq] = start + len(new)
            cu.append(cu[-1] + len(new))
            ctx_lens.append(self.lens[seq])
            tables.append(list(range(base, base + self.blocks_per_seq)))
        ctx = AttentionContext(
            ops=self.ops,
            kv_caches=self.kv_caches,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
            context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device),
            max_q_len=max(len(c) for c in chunks.values()),
            max_context_len=max(ctx_lens),
        )
        hidden = self.model(
            torch.tensor(ids, dtype=torch.int64, device=device),
            torch.tensor(positions, dtype=torch.int64, device=device),
            ctx,
        )
        return self.model.compute_logits(hidden)
