"""Connection limits before auth (raw sockets against uvicorn as `serve` runs it) and big bodies."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
from server_fakes import FakeEngine
from server_helpers import build_app, serve_in_thread

from shoal.engine.server.settings import ServerSettings

LIMITS = ServerSettings(
    served_model_name="fake-model",
    max_header_bytes=8 * 1024,
    max_header_count=20,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    keep_alive_s=0.5,
)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # the server closed with our unread bytes in its buffer: the kernel resets
    return data


def status_and_error(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def limited_app(**settings: Any) -> Any:
    fields = {k: getattr(LIMITS, k) for k in ("max_header_bytes", "max_header_count", "header_timeout_s",
                                              "body_timeout_s", "keep_alive_s")}  # fmt: skip
    return build_app(FakeEngine(), **{**fields, **settings})


def test_oversized_header_is_431_and_closed() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        status, error = status_and_error(read_all(sock))
        assert status == 431 and "8192 bytes" in error["message"]


def test_unfinished_huge_header_is_cut_without_waiting_for_its_end() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        start = time.monotonic()
        try:
            for _ in range(64):
                sock.sendall(b"a" * 1024)
        except OSError:
            pass  # closed while we were still sending: fine
        answer = read_all(sock)
        # cut well before the head timeout; the 431 may be lost to the reset of a closed socket
        assert time.monotonic() - start < 0.45
        assert not answer or status_and_error(answer)[0] == 431


def test_too_many_headers_is_431() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        status, error = status_and_error(read_all(sock))
        assert status == 431 and "at most 20" in error["message"]


def test_half_sent_header_is_408_after_the_head_timeout() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        status, error = status_and_error(read_all(sock))
        assert status == 408 and error["code"] == "request_timeout"
        assert 0.4 < time.monotonic() - start < 3


def test_content_length_larger_than_the_body_is_408() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"prompt\": ")  # fmt: skip
        status, error = status_and_error(read_all(sock))
        assert status == 408 and "body" in error["message"]
        assert time.monotonic() - start < 3


def test_idle_keep_alive_connection_is_closed() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert read_all(sock) == b""  # the server closes the idle connection
        assert time.monotonic() - start < 3


def test_normal_requests_pass_the_limits() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):  # keep-alive reuse
            r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3},
                            headers={f"X-H{i}": "v" * 100 for i in range(10)})  # fmt: skip
            assert r.status_code == 200


def poll_health(url: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            start = time.monotonic()
            client.get("/health")
            worst[0] = max(worst[0], time.monotonic() - start)
            time.sleep(0.01)


def test_multi_megabyte_chat_does_not_stall_the_event_loop() -> None:
    # A context so long that 4 MB of text is worth tokenizing: the work runs off the event loop.
    engine = FakeEngine(max_model_len=10**6)
    fast = engine.tokenizer.encode_chat

    def slow(*args: Any, **kwargs: Any) -> list[int]:
        time.sleep(1.0)  # a real template + tokenizer on megabytes takes seconds
        return fast(*args, **kwargs)

    engine.tokenizer.encode_chat = slow  # type: ignore[method-assign]
    body = {"messages": [{"role": "user", "content": "x" * 4_000_000}], "max_tokens": 2}
    with serve_in_thread(build_app(engine), LIMITS) as url, httpx.Client(base_url=url, timeout=60) as client:
        stop, worst = threading.Event(), [0.0]
        poller = threading.Thread(target=poll_health, args=(url, stop, worst))
        poller.start()
        time.sleep(0.1)
        start = time.monotonic()
        r = client.post("/v1/chat/completions", json=body)
        took = time.monotonic() - start
        stop.set()
        poller.join()
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert took > 1.0
        assert worst[0] < 0.5, f"/health stalled {worst[0]:.2f}s behind a big chat body"


def test_text_that_cannot_fit_is_refused_before_tokenizing(make_client: Any) -> None:
    engine = FakeEngine(max_model_len=512)
    app = build_app(engine)
    ctx = app.state.ctx
    calls = []
    original = engine.tokenizer.encode_chat
    engine.tokenizer.encode_chat = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    with serve_in_thread(app, LIMITS) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"messages": [{"role": "user", "content": "y" * (ctx.max_text_bytes() + 1)}], "max_tokens": 2}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert not calls


def test_a_body_bigger_than_the_head_limit_in_one_packet_is_not_a_big_head() -> None:
    app = build_app(FakeEngine(max_model_len=10**5), max_header_bytes=LIMITS.max_header_bytes)
    with serve_in_thread(app, LIMITS) as url, connect(url) as sock:
        body = json.dumps({"prompt": "x" * 20_000, "max_tokens": 1}).encode()
        request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body  # fmt: skip
        for _ in range(2):  # the second one follows a finished request on the same connection
            sock.sendall(request)
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            received = len(head.partition(b"\r\n\r\n")[2])
            while received < length:
                received += len(sock.recv(65536))


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout() -> None:
    with serve_in_thread(limited_app(), LIMITS) as url, connect(url) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""  # closed silently: there is no request to answer
        assert 0.4 < time.monotonic() - start < 3
