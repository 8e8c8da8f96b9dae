"""`make demo` end to end: the real engine on the bundled SmolLM2 behind the real router."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from support.api import REPO_ROOT, wait_for
from support.up import Up, assert_gone

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


@pytest.mark.slow
def test_engines_with_an_api_key_serve_through_the_router_only(tmp_path: Path) -> None:
    """ModelPool engine.auth under `shoal up`: the engine refuses keyless calls, the router holds the
    key (its upstream credential) and answers, and the key is on no process's command line."""
    import subprocess

    import httpx
    import yaml

    from shoal.engine.bundled import bundled_model_path

    bundled_model_path()
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "crds" / "examples" / "local" / "smollm2.yaml").read_text()) if d]
    pool = next(d for d in docs if d["kind"] == "ModelPool")
    pool["spec"]["engine"]["auth"] = {"apiKeySecretRef": {"name": "engine-key"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "engine-key"},
              "stringData": {"api-key": "sk-engine-only"}}  # fmt: skip
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump_all([*docs, secret]))
    up = Up(tmp_path, folder, "--demo")
    try:
        state = up.wait_ready(timeout=300)
        wait_for(lambda: "answer:" in up.text() or up.proc.poll() is not None, 300, 0.5, "the demo answer")
        assert "paris" in up.text().lower(), up.text()
        engine = next(p["url"] for p in state.processes if p["name"].startswith("engine/"))
        assert httpx.get(f"{engine}/v1/models").status_code == 401
        assert httpx.get(f"{engine}/v1/models", headers={"Authorization": "Bearer sk-engine-only"}).status_code == 200
        commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "sk-engine-only" not in commands
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0
        assert_gone([p["pid"] for p in state.processes])
    finally:
        up.kill()
