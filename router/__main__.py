"""``python -m shoal.router --config router.yaml [--host H] [--port N]``."""

from __future__ import annotations

import argparse
import logging
import sys

from shoal.router.app import create_app
from shoal.router.config import load_config


def configure_logging(level: str) -> None:
    """Root level from the config; the control path's polls log at DEBUG only."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: with polling that is several lines per endpoint per second.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.router", description="Shoal's OpenAI-compatible router")
    parser.add_argument("--config", required=True, help="router.yaml (see shoal.router.config)")
    parser.add_argument("--host", default=None, help="overrides listen.host")
    parser.add_argument("--port", type=int, default=None, help="overrides listen.port")
    parser.add_argument("--print-schema", action="store_true", help="print the config's JSON schema and exit")
    args = parser.parse_args(argv)
    if args.print_schema:
        import json

        from shoal.router.config import RouterConfig

        print(json.dumps(RouterConfig.json_schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.config)
    except Exception as exc:
        print(f"invalid router config {args.config}: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)
    import uvicorn

    from shoal.router.server import uvicorn_settings

    try:
        app = create_app(cfg)
    except ValueError as exc:  # e.g. the upstream credential is configured but missing
        print(f"router config {args.config}: {exc}", file=sys.stderr)
        return 2
    loop = "auto"  # uvloop when installed
    uvicorn.run(
        app,
        host=args.host or cfg.listen.host,
        port=args.port or cfg.listen.port,
        loop=loop,
        log_level=cfg.log_level,
        access_log=False,
        **uvicorn_settings(cfg),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
