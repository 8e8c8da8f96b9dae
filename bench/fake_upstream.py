"""A minimal OpenAI-style upstream that streams pre-made tokens at a fixed rate.

For measuring the router's own overhead: it does no work per token, so whatever the
router adds is not hidden by an engine's speed. Raw asyncio HTTP/1.1 (keep-alive,
chunked SSE) to stay far cheaper than the router it measures.

    python bench/fake_upstream.py --port 9100 --ttft-ms 20 --interval-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

MODEL = "fake"
_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def _fixed(body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Upstream:
    def __init__(self, ttft_s: float, interval_s: float, default_tokens: int, tokenizer: bytes | None = None) -> None:
        self.tokenizer = tokenizer
        """A ``/shoal/tokenizer`` payload to serve (the router's default tokenizer source), or None."""
        self.ttft_s = ttft_s
        self.interval_s = interval_s
        self.default_tokens = default_tokens
        self.running = 0
        self.served = 0
        token = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
        self._token_chunk = _chunk(b"data: " + json.dumps(token).encode() + b"\n\n")
        self._done_chunk = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def metrics(self) -> bytes:
        return (
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {self.running}\n'
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
            f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
        ).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if method == b"POST":
                    await self.generate(body, writer)
                elif path == b"/metrics":
                    writer.write(_fixed(self.metrics(), b"text/plain"))
                elif path == b"/shoal/tokenizer" and self.tokenizer is not None:
                    writer.write(_fixed(self.tokenizer))
                elif path == b"/v1/models":
                    writer.write(_fixed(json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()))
                else:
                    writer.write(_HEALTH)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def generate(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        req = json.loads(body)
        tokens = int(req.get("max_tokens") or self.default_tokens)
        interval_s = float(req.get("bench_interval_ms", self.interval_s * 1000)) / 1000  # per-request pacing
        self.running += 1
        try:
            if not req.get("stream"):
                await asyncio.sleep(self.ttft_s + interval_s * (tokens - 1))
                out = {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": " tok" * tokens},
                                    "finish_reason": "length"}]}
                writer.write(_fixed(json.dumps(out).encode()))
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            start = time.perf_counter()
            for i in range(tokens):
                # Paced against the start, so timer slop does not accumulate.
                delay = start + self.ttft_s + i * interval_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(self._token_chunk)
                await writer.drain()
            writer.write(self._done_chunk)
        finally:
            self.running -= 1
            self.served += 1


async def serve(host: str, port: int, ttft_ms: float, interval_ms: float, tokens: int,
                tokenizer: bytes | None = None) -> None:
    up = Upstream(ttft_ms / 1000, interval_ms / 1000, tokens, tokenizer)
    server = await asyncio.start_server(up.handle, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="delay before the first token")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="gap between tokens")
    parser.add_argument("--tokens", type=int, default=16, help="tokens when the request has no max_tokens")
    parser.add_argument("--tokenizer", default=None, help="JSON file served as GET /shoal/tokenizer")
    args = parser.parse_args()
    tokenizer = Path(args.tokenizer).read_bytes() if args.tokenizer else None
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, args.ttft_ms, args.interval_ms, args.tokens, tokenizer))


if __name__ == "__main__":
    main()
