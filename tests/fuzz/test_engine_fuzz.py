"""Fuzz tier for the engine server: 0 server errors, the engine alive afterwards.

1. schemathesis generates requests (valid and invalid) from the app's own OpenAPI document
   for every operation and sends them over a real socket to the server on the fake engine.
2. hypothesis draws sampling parameters over their whole ranges (and past them) against a
   tiny real engine, whose sampler and step they reach.

Run with ``make test-fuzz`` (``-m fuzz``); bounded to well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys
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

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))

from server_fakes import FakeEngine
from server_helpers import build_app, serve_in_thread

from shoal.engine.server.settings import ServerSettings

pytestmark = pytest.mark.fuzz

EXAMPLES_PER_OPERATION = 40
SAMPLING_EXAMPLES = 120
LIMITS = ServerSettings(served_model_name="fuzz", header_timeout_s=5.0, body_timeout_s=5.0)
FUZZ_SETTINGS = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck), print_blob=True
)


def fuzz_settings(max_examples: int) -> settings:
    return settings(FUZZ_SETTINGS, max_examples=max_examples)


@pytest.fixture(autouse=True)
def _only_when_selected(request: pytest.FixtureRequest) -> None:
    """The default tier (no ``-m fuzz``) skips this module: it is its own CI tier."""
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("fuzz tier: run with -m fuzz (make test-fuzz)")


def assert_no_server_error(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"


# ---------------------------------------------------------------- schemathesis on the OpenAPI document


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, Any]]:
    app = build_app(FakeEngine(), served_model_name="fuzz", header_timeout_s=5.0, body_timeout_s=5.0)
    with serve_in_thread(app, LIMITS) as url:
        yield url, app


def operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_operations_never_answer_a_server_error(fake_server: tuple[str, Any], mode: GenerationMode) -> None:
    url, app = fake_server
    ops = operations(app)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/tokenize"}
    for operation in ops:

        @fuzz_settings(EXAMPLES_PER_OPERATION)
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            response = case.call(base_url=url, timeout=30)
            assert_no_server_error(response, f"{case.method} {case.formatted_path} {case.body!r:.300}")

        try:
            call()
        except Unsatisfiable:
            # an operation without a body or constrained parameters has no invalid form
            assert mode is GenerationMode.NEGATIVE and not len(operation.body), operation.path
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/health").status_code == 200
        r = client.post("/v1/completions", json={"prompt": "still alive", "max_tokens": 2})
        assert r.status_code == 200


# ---------------------------------------------------------------- hypothesis on sampling parameters, real engine

_ANY_INT = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64]))
_ANY_FLOAT = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-3, 3), st.sampled_from([0.0, 1.0]))
# Values the API accepts but a naive engine cannot represent (the class of issue 11's poison bodies).
_EDGE_TOP_K = st.one_of(st.integers(-1, 100), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30]))
_EDGE_SEED = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([-(2**63), 0, 2**63, 2**64 - 1]))
_EDGE_TOKEN = st.one_of(st.integers(0, 50_000), st.sampled_from([49_151, 49_152, 99_999_999, 2**63]))
_IN_RANGE = {
    "n": st.integers(1, 3),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": _EDGE_TOP_K,
    "min_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 10),
    "seed": _EDGE_SEED,
    "min_tokens": st.integers(0, 4),
    "stop_token_ids": st.lists(_EDGE_TOKEN, max_size=3),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=3),
    "ignore_eos": st.booleans(),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "stream": st.booleans(),
    "priority": st.integers(-(2**31), 2**31 - 1),
    "program_id": st.sampled_from(["p1", "tenant/p:2"]),
    "program_retention_s": st.floats(0, 7 * 86400),
}
_ANYTHING = {
    **_IN_RANGE,
    "n": st.integers(-1, 4),
    "temperature": _ANY_FLOAT,
    "top_p": _ANY_FLOAT,
    "top_k": _ANY_INT,
    "min_p": _ANY_FLOAT,
    "repetition_penalty": _ANY_FLOAT,
    "seed": _ANY_INT,
    "min_tokens": st.integers(-2, 6),
    "stop_token_ids": st.lists(_ANY_INT, max_size=3),
    "stop": st.lists(st.text(max_size=4), max_size=3),
    "top_logprobs": st.integers(-1, 25),
    "priority": _ANY_INT,
    "program_id": st.sampled_from(["p1", "bad id"]),
    "program_retention_s": _ANY_FLOAT,
}
# Mostly in range (so requests reach the sampler and the step), sometimes anything at all.
_SAMPLING = st.one_of(
    st.fixed_dictionaries({"max_tokens": st.integers(1, 4)}, optional=_IN_RANGE),
    st.fixed_dictionaries({"max_tokens": st.integers(1, 4)}, optional=_IN_RANGE),
    st.fixed_dictionaries({"max_tokens": st.integers(-1, 4)}, optional=_ANYTHING),
)


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    from shoal.engine.config import EngineConfig
    from shoal.engine.llm_engine import LLMEngine
    from shoal.engine.server.api_server import create_app
    from shoal.engine.server.async_engine import AsyncEngine
    from support.tiny_models import build_tiny_checkpoint

    model = build_tiny_checkpoint("llama_tied", tmp_path_factory.mktemp("fuzz-tiny") / "tiny")
    engine = LLMEngine(EngineConfig(model=str(model), num_kv_blocks=48, num_threads=1, max_model_len=128))
    app = create_app(AsyncEngine(engine), ServerSettings(served_model_name="fuzz", block_size=engine.block_size))
    with serve_in_thread(app, LIMITS) as url:
        yield url, engine


def test_sampling_parameters_never_break_a_real_engine(tiny_server: tuple[str, Any]) -> None:
    url, engine = tiny_server
    with httpx.Client(base_url=url, timeout=60) as client:

        @fuzz_settings(SAMPLING_EXAMPLES)
        @given(params=_SAMPLING, chat=st.booleans())
        def call(params: dict[str, Any], chat: bool) -> None:
            if chat:
                body = {"messages": [{"role": "user", "content": "fuzz me"}], **params}
                response = client.post("/v1/chat/completions", json=body)
            else:
                lp = params.pop("top_logprobs", None)
                params.pop("logprobs", None)
                body = {"prompt": "fuzz me", **params, **({"logprobs": lp} if lp is not None else {})}
                response = client.post("/v1/completions", json=body)
            assert_no_server_error(response, repr(body))
            assert "server_error" not in response.text, repr(body)  # a failed step inside a stream

        call()
        assert client.get("/health").status_code == 200
        r = client.post("/v1/completions", json={"prompt": "still alive", "max_tokens": 2})
        assert r.status_code == 200
    assert not engine.has_unfinished_requests()
    pinned = engine.programs.num_pinned_blocks
    assert engine.block_manager.num_free_blocks + pinned == engine.num_blocks or pinned > 0
