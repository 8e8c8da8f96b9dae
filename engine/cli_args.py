"""Engine flags shared by ``generate`` and ``serve`` (one flag per EngineConfig field)."""

from __future__ import annotations

import argparse

from shoal.engine.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF folder, .gguf file, or 'bundled:smollm2-135m-instruct'")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-kv-blocks", type=int, default=None)
    parser.add_argument("--kv-cache-memory-gb", type=float, default=1.0)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
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
        max_pinned_blocks_per_tenant=args.max_pinned_blocks_per_tenant,
        max_retention_s=args.max_retention_s,
    )
