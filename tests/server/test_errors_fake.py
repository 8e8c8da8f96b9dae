"""Every bad request gets the right status and OpenAI's error JSON (fake engine)."""

from __future__ import annotations

from typing import Any

import bad_requests
import pytest

MAX_BODY = 64 * 1024


@pytest.mark.parametrize("case", bad_requests.cases("fake-model", 512, MAX_BODY), ids=lambda c: c.name)
async def test_bad_request(make_client: Any, case: bad_requests.Case) -> None:
    client, _, engine = await make_client(max_body_bytes=MAX_BODY)
    bad_requests.check(case, await bad_requests.send(client, case))
    assert (await client.get("/health")).status_code == 200
    assert not engine.has_unfinished_requests()


async def test_chunked_body_over_limit(make_client: Any) -> None:
    client, _, _ = await make_client(max_body_bytes=MAX_BODY)

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * (MAX_BODY // 4)

    r = await client.post("/v1/completions", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
