"""Fixtures for server tests (helpers live in server_helpers.py, the fake engine in server_fakes.py)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_fakes import FakeEngine
from server_helpers import build_app


@pytest.fixture
async def make_client() -> AsyncIterator[Any]:
    """``await make_client(engine=None, **settings) -> (client, app, engine)`` over ASGI (no socket)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(engine: FakeEngine | None = None, **settings: Any) -> tuple[httpx.AsyncClient, Any, FakeEngine]:
            engine = engine or FakeEngine()
            app = build_app(engine, **settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)
            await stack.enter_async_context(client)
            return client, app, engine

        yield make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (SmolLM2 tokenizer) with a Hermes-style tool template, built once per session."""
    from server_helpers import use_hermes_template

    from support.tiny_models import build_tiny_checkpoint

    path = build_tiny_checkpoint("llama_tied", tmp_path_factory.mktemp("server-tiny") / "tiny")
    use_hermes_template(path)
    return path


@pytest.fixture(scope="session")
def bundled_model() -> str:
    """The bundled SmolLM2-135M (`make setup` installs it; a missing package fails loudly)."""
    from shoal.engine.bundled import bundled_model_path

    bundled_model_path()
    return "bundled:smollm2-135m-instruct"
