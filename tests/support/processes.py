"""Waiting for a server process the tests started (engines, routers) to answer /health."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    """Return once ``url``/health answers 200; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: not healthy after {timeout_s} s:\n{_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
