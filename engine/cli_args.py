"""Engine flags shared by ``generate`` and ``serve`` (one flag per EngineConfig field)."""

from __future__ import annotations

import argparse

from shoal.engine.config import EngineConfig
from shoal.engine.machine_defaults import default_step_budget
from shoal.engine.spec.config import SpeculationConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF folder, .gguf file, or 'bundled:smollm2-135m-instruct'")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-kv-blocks", type=int, default=None)
    parser.add_argument("--kv-cache-memory-gb", type=float, default=None,
                        help="KV pool memory (default: sized from the machine's free memory)")  # fmt: skip
    parser.add_argument("--max-num-batched-tokens", type=int, default=default_step_budget(),
                        help="tokens per step (default: 1024 per core, 1024-8192)")  # fmt: skip
    parser.add_argument("--weights", default="auto", choices=["auto", "native", "dequantized"],
                        help="GGUF Q4_1/Q8_0 weights: computed from their blocks (native, CPU) or as fp32 copies")  # fmt: skip
    parser.add_argument("--batch-matmul", default="float32", choices=["float32", "bfloat16"],
                        help="native weights, GEMMs of > 48 rows: oneDNN on packed fp32 or bf16 weights (bf16: less exact)")  # fmt: skip
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--kernels", default=None, choices=["torch", "triton"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument(
        "--max-pinned-blocks-per-tenant", type=int, default=None,
        help="KV blocks one tenant's program pins may hold (default: a quarter of the pool)",
    )  # fmt: skip
    parser.add_argument("--max-retention-s", type=float, default=600.0, help="cap on program retention (seconds)")
    spec = SpeculationConfig()
    parser.add_argument(
        "--speculation", default=None, choices=["trie"],
        help="lossless speculative decoding: 'trie' drafts from the request's own text and a trie learned from traffic",
    )  # fmt: skip
    parser.add_argument("--spec-max-draft-tokens", type=int, default=spec.max_draft_tokens,
                        help="most drafted tokens verified per sequence per step")  # fmt: skip
    parser.add_argument("--spec-max-batch-size", type=int, default=spec.max_batch_size,
                        help="no speculation when more sequences than this decode in a step")  # fmt: skip
    parser.add_argument("--spec-global-trie-nodes", type=int, default=spec.global_trie_nodes,
                        help="memory bound of the trie learned from all traffic (nodes; 0 = own text only)")  # fmt: skip


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        device=args.device,
        dtype=args.dtype,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory_gb=args.kv_cache_memory_gb,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        kernels=args.kernels,
        seed=args.seed,
        num_threads=args.num_threads,
        weights=args.weights,
        batch_matmul=args.batch_matmul,
        max_pinned_blocks_per_tenant=args.max_pinned_blocks_per_tenant,
        max_retention_s=args.max_retention_s,
        speculation=_speculation(args),
    )


def _speculation(args: argparse.Namespace) -> SpeculationConfig | None:
    if args.speculation is None:
        return None
    draft = args.spec_max_draft_tokens
    return SpeculationConfig(
        method=args.speculation,
        max_draft_tokens=draft,
        max_depth=max(1, min(SpeculationConfig.max_depth, draft)),
        max_batch_size=args.spec_max_batch_size,
        global_trie_nodes=args.spec_global_trie_nodes,
    )
