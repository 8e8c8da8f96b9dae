"""The engine CLI answers bad input with one line and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--model", "/does/not/exist", "--port", "0"], "model path not found"),
        (["generate", "--model", "/does/not/exist", "hi"], "model path not found"),
        (["generate", "--model", "/does/not/exist", "--temperature", "-1", "hi"], "temperature"),
        (["serve", "--model", "x", "--block-size", "3"], "block_size"),
        (["serve", "--model", "x", "--max-pinned-blocks-per-tenant", "-1"], "max_pinned_blocks_per_tenant"),
        (["serve", "--model", "x", "--max-retention-s", "-5"], "max_retention_s"),
        (["serve", "--model", "x", "--header-timeout", "0"], "--header-timeout"),
        (["serve", "--model", "x", "--max-header-bytes", "10"], "--max-header-bytes"),
        (["serve", "--model", "x", "--drain-delay", "-1"], "--drain-delay"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.engine", *args], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
