"""``shoal operator``: run the kopf operator (in a cluster, or against KUBECONFIG)."""

from __future__ import annotations

import argparse


def add_operator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch only this namespace (repeatable; a glob like 'team-*' works); default: all namespaces",
    )  # fmt: skip
    parser.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_operator(args: argparse.Namespace) -> int:
    """Blocks until SIGINT/SIGTERM."""
    # KUBECONFIG must be final before kubernetes/kopf are imported (kopf reads it when logging in).
    import kopf

    import shoal.operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0
