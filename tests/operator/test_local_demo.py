"""`make demo` end to end: the real engine on the bundled SmolLM2 behind the real router."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from shoal.operator.testing.api import REPO_ROOT, wait_for
from shoal.operator.testing.up import Up, assert_gone

pytestmark = pytest.mark.integration


def test_demo_answers_through_the_router_and_leaves_no_process(tmp_path: Path) -> None:
    from shoal.engine.bundled import bundled_model_path

    bundled_model_path()  # fails loudly when the bundled model is not installed
    up = Up(tmp_path, REPO_ROOT / "crds" / "examples" / "local", "--demo")
    try:
        state = up.wait_ready(timeout=300)
        wait_for(lambda: "answer:" in up.text() or up.proc.poll() is not None, 300, 0.5, "the demo answer")
        answer = re.search(r"answer: (.*)", up.text())
        assert answer is not None, up.text()
        assert "paris" in answer.group(1).lower(), up.text()
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0
        assert_gone([p["pid"] for p in state.processes])
    finally:
        up.kill()
