"""``python -m shoal.engine {generate,serve}``."""

from __future__ import annotations

import argparse
import os
import sys

# Set before torch is imported: busy-waiting OpenMP threads starve co-located processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from shoal.engine.cli_args import add_engine_args, engine_config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.engine", description="Shoal inference engine")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="offline generation on a model")
    add_engine_args(generate)
    from shoal.engine.generate_cli import add_generate_args, run_generate

    add_generate_args(generate)

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server")
    add_engine_args(serve)
    from shoal.engine.server.cli import add_server_args, run_server

    add_server_args(serve)

    args = parser.parse_args(argv)
    try:
        config = engine_config_from_args(args)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.command == "generate":
        return run_generate(args, config)
    try:
        return run_server(args, config)
    except ValueError as exc:  # a bad model or setting found while building the engine
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
