"""``python -m shoal.engine generate``: offline generation from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from shoal.engine.config import EngineConfig


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="prompts (chat messages by default; see --raw)")
    parser.add_argument("--file", help="a text file with one prompt per line")
    parser.add_argument("--raw", action="store_true", help="plain completion instead of the chat template")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--sample-seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")


def run_generate(args: argparse.Namespace, config: EngineConfig) -> int:
    from shoal.engine.llm import LLM
    from shoal.engine.sampling_params import SamplingParams

    prompts = list(args.prompts)
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            prompts.extend(line.rstrip("\n") for line in fh if line.strip())
    if not prompts:
        print("error: give at least one prompt (or --file)", file=sys.stderr)
        return 2
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.sample_seed,
        )
        llm = LLM(**{k: v for k, v in vars(config).items()})
        inputs = prompts if args.raw else [[{"role": "user", "content": p}] for p in prompts]
        results = llm.generate(inputs, params, progress=not args.json)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for prompt, result in zip(prompts, results, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": result.text, "finish_reason": result.finish_reason,
                              "usage": {"prompt_tokens": result.usage.prompt_tokens,
                                        "completion_tokens": result.usage.completion_tokens,
                                        "cached_tokens": result.usage.cached_tokens}}))
        else:
            print(f"\n>>> {prompt}\n{result.text}")
    return 0
