"""Runs one scheduled batch through the model: inputs -> forward -> logits -> sampled tokens.

Owns the model weights, the KV cache tensors and the per-sequence generators.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

import torch

from shoal.engine.attention_context import AttentionContext
from shoal.engine.config import EngineConfig
from shoal.engine.cuda_graph import DecodeCudaGraphs
from shoal.engine.kernels import get_backend
from shoal.engine.kernels.cpu.batch_matmul import resolve_batch_matmul
from shoal.engine.loader import load_model
from shoal.engine.machine_defaults import default_kv_cache_bytes
from shoal.engine.sampler import SampleResult, SamplingRow, sample
from shoal.engine.scheduler import ScheduledSequence
from shoal.engine.sequence import Sequence
from shoal.engine.spec.token_tree import DraftTree
from shoal.engine.spec.tree_attention import TreeAttentionBackend
from shoal.engine.spec.verify import relocate_accepted_kv, verify
from shoal.engine.structured import GrammarMasks

logger = logging.getLogger("shoal.engine")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SampleRequest:
    """Sample ``num_samples`` tokens from the last position of ``seq`` (n>1 forks sample several)."""

    seq: Sequence
    num_samples: int = 1
    banned_token_ids: tuple[int, ...] = ()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        loaded = load_model(config.model, self.dtype, self.device, config.weights)
        self.model = loaded.model.eval()
        batch_gemm = resolve_batch_matmul(config.batch_matmul, self.model.uses_quantized_weights)
        if batch_gemm is not None:
            self.model.use_packed_batch_gemm(batch_gemm)
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        self.ops = get_backend(config.kernels, self.device.type)
        self.block_size = config.block_size
        kv_bytes = (
            default_kv_cache_bytes(self.device.type)
            if config.kv_cache_memory_gb is None
            else int(config.kv_cache_memory_gb * (1 << 30))
        )
        self.num_blocks = config.num_kv_blocks or self._blocks_for_memory(kv_bytes)
        mc = self.model_config
        shape = (self.num_blocks, self.block_size, mc.num_kv_heads, mc.head_dim)
        self.kv_caches = [
            (self.ops.allocate_kv_cache(*shape, self.dtype, self.device), self.ops.allocate_kv_cache(*shape, self.dtype, self.device))
            for _ in range(mc.num_layers)
        ]
        logger.info(
            "engine settings: device=%s dtype=%s weights=%s batch_matmul=%s threads=%d kv_pool=%d blocks (%d tokens, %.2f GiB)%s "
            "step_budget=%d tokens max_num_seqs=%d",
            self.device, self.dtype, "native" if self.model.uses_quantized_weights else "fp32",
            "torch linear" if batch_gemm is None else f"oneDNN {batch_gemm}",
            torch.get_num_threads(), self.num_blocks, self.num_blocks * self.block_size,
            self.num_blocks * self._block_bytes() / (1 << 30), "" if config.kv_cache_memory_gb or config.num_kv_blocks
            else " sized from the machine", config.max_num_batched_tokens, config.max_num_seqs,
        )  # fmt: skip
        # [kernel-runtime] Decode CUDA graphs (engine/cuda_graph.py), one per batch bucket, captured at start-up.
        # CUDA + triton backend only (the torch ops sync with the host); SHOAL_CUDA_GRAPHS=0 turns them off.
        self.decode_graphs: DecodeCudaGraphs | None = None
        if self.device.type == "cuda" and self.ops.name == "triton" and os.environ.get("SHOAL_CUDA_GRAPHS") != "0":
            max_len = config.max_model_len or mc.max_position_embeddings
            self.decode_graphs = DecodeCudaGraphs(
                self.model, self.ops, self.kv_caches, config.max_num_seqs, -(-max_len // self.block_size)
            )
            # Every bucket at start-up: a first capture mid-serving would stall that step by seconds.
            self.decode_graphs.capture_all()
            logger.info("captured decode CUDA graphs for batch sizes %s", self.decode_graphs.buckets)
        self._generators: dict[tuple[str, int], torch.Generator] = {}
        self.grammar_masks = GrammarMasks(mc.vocab_size)
        self._seed_source = torch.Generator().manual_seed(config.seed)

    def _block_bytes(self) -> int:
        """Bytes of one KV block over all layers (K and V)."""
        mc = self.model_config
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * mc.num_layers * self.block_size * mc.num_kv_heads * mc.head_dim * elem

    def _blocks_for_memory(self, kv_bytes: int) -> int:
        return max(1, kv_bytes // self._block_bytes())

    # ---- generators ------------------------------------------------------------------------
    def generator_for(self, request_id: str, index: int, seed: int | None) -> torch.Generator:
        key = (request_id, index)
        gen = self._generators.get(key)
        if gen is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_source))
            else:
                # any 64-bit seed is valid; wrap so seed + offset stays in manual_seed's range
                seed = (seed + index * 1_000_003) % 2**64
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._generators[key] = gen
        return gen

    def release_request(self, request_id: str, n: int) -> None:
        for index in range(n):
            self._generators.pop((request_id, index), None)

    # ---- the step --------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSequence], requests: list[SampleRequest]) -> list[list[SampleResult]]:
        """Compute ``scheduled`` and sample for ``requests`` (each a subset sequence of it)."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_seqlens = [0]
        context_lens: list[int] = []
        last_index: dict[int, int] = {}
        trees: dict[int, DraftTree] = {}
        max_blocks = 1
        for b, item in enumerate(scheduled):
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_tokens
            input_ids.extend(seq.token_ids[start:end])
            # [speculation] drafted nodes follow the sequence: in the cache, as queries, at their tree depth
            num_draft = 0 if item.draft is None else len(item.draft)
            table = seq.block_table
            for pos in range(start, end + num_draft):
                slots.append(table[pos // bs] * bs + pos % bs)
            positions.extend(range(start, end))
            if item.draft is not None:
                trees[b] = item.draft
                input_ids.extend(item.draft.tokens)
                positions.extend(end - 1 + depth for depth in item.draft.depths)
            cu_seqlens.append(cu_seqlens[-1] + item.num_tokens + num_draft)
            context_lens.append(end + num_draft)
            last_index[seq.seq_id] = cu_seqlens[-2] + item.num_tokens - 1
            max_blocks = max(max_blocks, len(table))
        block_tables = torch.tensor(
            [item.seq.block_table + [0] * (max_blocks - len(item.seq.block_table)) for item in scheduled],
            dtype=torch.int32,
        )
        dev = self.device
        ctx = AttentionContext(
            ops=TreeAttentionBackend(self.ops, trees) if trees else self.ops,
            kv_caches=self.kv_caches,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=block_tables.to(dev),
            cu_seqlens_q=torch.tensor(cu_seqlens, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev),
            max_q_len=max(b - a for a, b in itertools.pairwise(cu_seqlens)),
            max_context_len=max(context_lens),
        )
        all_requests = requests
        drafting_ids = {scheduled[b].seq.seq_id for b in trees}
        drafting = [r for r in requests if r.seq.seq_id in drafting_ids]
        requests = [r for r in requests if r.seq.seq_id not in drafting_ids]
        # [structured] constrained rows' masks are computed on the CPU while the model runs
        masks = self.grammar_masks.start([r.seq.matcher for r in requests], [r.num_samples for r in requests])
        ids_t = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        # [kernel-runtime] Steps of one token per sequence replay a captured graph when one fits.
        graphs = self.decode_graphs
        if graphs is not None and ctx.max_q_len == 1 and graphs.supports(len(scheduled), max_blocks):
            hidden = graphs.run(ids_t, pos_t, ctx.slot_mapping, ctx.block_tables, ctx.context_lens)
        else:
            hidden = self.model(ids_t, pos_t, ctx)
        verified = self._verify_drafts(hidden, drafting, scheduled, cu_seqlens)
        if not requests:
            return [verified[r.seq.seq_id] for r in all_requests]
        rows_index = torch.tensor([last_index[r.seq.seq_id] for r in requests], dtype=torch.long, device=dev)
        logits = self.model.compute_logits(hidden[rows_index])
        expanded = []
        sampling_rows: list[SamplingRow] = []
        for i, req in enumerate(requests):
            seq = req.seq
            for k in range(req.num_samples):
                index = seq.index + k
                expanded.append(i)
                sampling_rows.append(
                    SamplingRow(
                        params=seq.params,
                        generator=self.generator_for(seq.request_id, index, seq.params.seed),
                        token_ids=seq.token_ids,
                        num_prompt_tokens=seq.num_prompt_tokens,
                        banned_token_ids=req.banned_token_ids,
                    )
                )
        if len(expanded) != len(requests):
            logits = logits[torch.tensor(expanded, device=dev)]
        if masks is not None:
            logits = masks.apply(logits)
        results = sample(logits, sampling_rows, self.ops)
        grouped: list[list[SampleResult]] = []
        pos = 0
        for req in requests:
            grouped.append(results[pos : pos + req.num_samples])
            pos += req.num_samples
        if not verified:
            return grouped
        by_seq = verified | {r.seq.seq_id: samples for r, samples in zip(requests, grouped, strict=True)}
        return [by_seq[r.seq.seq_id] for r in all_requests]

    def _verify_drafts(
        self, hidden: torch.Tensor, requests: list[SampleRequest], scheduled: list[ScheduledSequence], cu_seqlens: list[int]
    ) -> dict[int, list[SampleResult]]:
        """[speculation] Each drafting sequence's accepted tokens (plus the model's own next one);
        the accepted nodes' KV is moved into place, the rejected ones' is left to be overwritten."""
        batch_row = {item.seq.seq_id: b for b, item in enumerate(scheduled)}
        verified: dict[int, list[SampleResult]] = {}
        for req in requests:
            seq = req.seq
            item = scheduled[batch_row[seq.seq_id]]
            assert item.draft is not None
            first = cu_seqlens[batch_row[seq.seq_id]] + item.num_tokens - 1
            logits = self.model.compute_logits(hidden[first : first + 1 + len(item.draft)])
            generator = self.generator_for(seq.request_id, seq.index, seq.params.seed)
            result = verify(logits, item.draft, seq.params, generator, self.ops)
            first_draft_pos = seq.num_computed_tokens + item.num_tokens
            relocate_accepted_kv(self.kv_caches, self.ops, seq.block_table, self.block_size, first_draft_pos, result.path)
            verified[seq.seq_id] = result.results
        return verified
