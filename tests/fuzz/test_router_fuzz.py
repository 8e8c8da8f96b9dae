"""Fuzz tier for the router: 0 server errors from the router in front of a fake engine.

1. schemathesis generates requests (valid and invalid) from the OpenAI operations' schema
   (the engine server's own OpenAPI document: the router serves the same paths) and sends
   them over a real socket to the router.
2. hypothesis draws arbitrary JSON bodies and headers (deep nesting, odd Unicode, wrong
   types) at both generation paths.

The fake engine always answers 200, so any 5xx comes from the router itself. Run with
``make test-fuzz`` (``-m fuzz``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
sys.path.insert(0, str(Path(__file__).parents[1] / "server"))

from _fakes import FakeEngine
from server_helpers import serve_in_thread

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.server import uvicorn_settings

pytestmark = pytest.mark.fuzz

ROUTER_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models"}
EXAMPLES_PER_OPERATION = 40
JSON_EXAMPLES = 150
FUZZ_SETTINGS = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck), print_blob=True
)


@pytest.fixture(autouse=True)
def _only_when_selected(request: pytest.FixtureRequest) -> None:
    """The default tier (no ``-m fuzz``) skips this module: it is its own CI tier."""
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("fuzz tier: run with -m fuzz (make test-fuzz)")


@pytest.fixture(scope="module")
def router_url() -> Iterator[str]:
    with serve_in_thread(FakeEngine("fuzz-engine", models=("fuzz",)).app()) as engine_url:
        cfg = RouterConfig.model_validate({
            "pools": [{"name": "fuzz", "models": ["fuzz"], "endpoints": {"static": [engine_url]},
                       "tokenizer": {"source": "none"}}],
            "health": {"scrapeIntervalS": 0.2},
            "timeouts": {"clientHeaderS": 5, "clientBodyS": 5},
        })
        with serve_in_thread(create_app(cfg), **uvicorn_settings(cfg)) as url:
            with httpx.Client(base_url=url) as client:
                for _ in range(100):
                    if client.get("/health").status_code == 200:
                        break
                    time.sleep(0.05)
            yield url


def _no_server_error(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"


def _openai_operations() -> list[Any]:
    from server_helpers import build_app

    schema = schemathesis.openapi.from_dict(build_app().openapi())
    return [r.ok() for r in schema.get_all_operations() if r.ok().path in ROUTER_PATHS]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openai_operations_never_get_a_router_error(router_url: str, mode: GenerationMode) -> None:
    ops = _openai_operations()
    assert {op.path for op in ops} == ROUTER_PATHS
    for operation in ops:

        @settings(FUZZ_SETTINGS, max_examples=EXAMPLES_PER_OPERATION)
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            if isinstance(case.body, dict) and case.path != "/v1/models":
                case.body["model"] = "fuzz"  # reach the engine, not only the 404 of an unknown model
            response = case.call(base_url=router_url, timeout=30)
            _no_server_error(response, f"{case.method} {case.formatted_path} {case.body!r:.300}")

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE and not len(operation.body), operation.path


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", ""])},
                          optional={"content": _JSON | st.text(), "name": _JSON}),
    max_size=3,
)
_BODY = st.one_of(
    _JSON,
    st.fixed_dictionaries({"model": st.sampled_from(["fuzz", "nope"]) | _JSON},
                          optional={"messages": _MESSAGES | _JSON, "prompt": _JSON, "stream": _JSON,
                                    "max_tokens": _JSON, "n": _JSON, "temperature": _JSON, "priority": _JSON,
                                    "extra_body": _JSON, "stop": _JSON, "user": _JSON, "program_id": _JSON}),
)
_RAW_EXTRAS = st.sampled_from([b"", b"[" * 5000, b'"\\ud800"', b"\xff\xfe", b"{" * 3, b"\x00"])
_LONE_SURROGATES = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3)
_NASTY_BODIES = st.one_of(
    st.integers(1, 60_000).map(lambda depth: b'{"model": "fuzz", "messages": ' + b"[" * depth + b"]" * depth + b"}"),
    _LONE_SURROGATES.map(lambda text: json.dumps(
        {"model": "fuzz", "messages": [{"role": "user", "content": f"a{text}b"}]}).encode()),
    _LONE_SURROGATES.map(lambda text: json.dumps({"model": "fuzz", "prompt": text, "stop": [text]}).encode()),
)


def test_arbitrary_json_bodies_never_get_a_router_error(router_url: str) -> None:
    with httpx.Client(base_url=router_url, timeout=30) as client:

        @settings(FUZZ_SETTINGS, max_examples=JSON_EXAMPLES)
        @given(body=_BODY, chat=st.booleans(), extra=_RAW_EXTRAS,
               header=st.from_regex(r"[!-~]([ -~]{0,38}[!-~])?", fullmatch=True))
        def call(body: Any, chat: bool, extra: bytes, header: str) -> None:
            raw = json.dumps(body, allow_nan=True).encode() + extra
            path = "/v1/chat/completions" if chat else "/v1/completions"
            headers = {"content-type": "application/json", "x-shoal-tenant": header, "x-session-id": header}
            response = client.post(path, content=raw, headers=headers)
            _no_server_error(response, f"{path} {raw[:300]!r}")

        @settings(FUZZ_SETTINGS, max_examples=40)
        @given(raw=_NASTY_BODIES, chat=st.booleans())
        def nasty(raw: bytes, chat: bool) -> None:
            path = "/v1/chat/completions" if chat else "/v1/completions"
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            _no_server_error(response, f"{path} {raw[:300]!r}")

        call()
        nasty()
        assert client.get("/health").status_code == 200
