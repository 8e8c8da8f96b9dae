"""Helpers for server tests: the app around a fake engine, on a real socket, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from server_fakes import FakeEngine

from shoal.engine.server.api_server import create_app
from shoal.engine.server.async_engine import AsyncEngine
from shoal.engine.server.http_limits import uvicorn_config
from shoal.engine.server.settings import ServerSettings
from support.processes import wait_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(engine: FakeEngine | None = None, **settings: Any) -> Any:
    engine = engine or FakeEngine()
    settings.setdefault("served_model_name", "fake-model")
    settings.setdefault("block_size", engine.block_size)
    return create_app(AsyncEngine(engine), ServerSettings(**settings))


@contextlib.contextmanager
def serve_in_thread(app: Any, limits: ServerSettings | None = None, **uvicorn_kwargs: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL.

    With ``limits``, uvicorn runs as ``serve`` runs it (the engine's HTTP protocol limits);
    ``uvicorn_kwargs`` go to ``uvicorn.Config`` otherwise (e.g. the router's own settings).
    """
    port = free_port()
    if limits is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_kwargs)
    else:
        config = uvicorn_config(app, limits, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def engine_server(model: str, *args: str, log_dir: Path, ready_timeout: float = 120.0) -> Iterator[ServerProcess]:
    """``python -m shoal.engine serve`` on a free 127.0.0.1 port; SIGTERM (then kill) on exit."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "shoal.engine", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_healthy(server.url, proc, log_path, ready_timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are a helpful assistant.' }}

# Tools
You may call functions. Signatures:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Answer each call as <tool_call>{"name": <name>, "arguments": <json object>}</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}
{%- elif message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% elif message['role'] == 'assistant' %}<|im_start|>assistant
{{ message['content'] }}{% for call in message['tool_calls'] or [] %}<tool_call>
{"name": "{{ call['function']['name'] }}", "arguments": {{ call['function']['arguments'] | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def use_hermes_template(model_dir: Path) -> None:
    """Give a tiny checkpoint a Qwen/Hermes-style template that renders tools and tool calls."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = HERMES_TEMPLATE
    path.write_text(json.dumps(config))


def metric_values(text: str) -> dict[str, float]:
    """``{sample name (+ sorted labels but model_name): value}`` from an exposition."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name")
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values
