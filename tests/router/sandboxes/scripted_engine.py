"""A scripted "model" for the example agent's end-to-end test: same CLI as the engine, OpenAI
answers with tool calls that depend on the conversation so far (run as ``python -m scripted_engine``).

Turn 1 writes the user's task into ``notes/task.txt`` (write_file); turn 2 prints that file
upper-cased (run_python); turn 3 answers with the last tool output. It also speaks the
program contract the router reads (``shoal:`` capacity metrics, pin release).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from support.fake_engine import serve_main


def next_message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    task = next(m["content"] for m in messages if m["role"] == "user")
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    if not results:
        call = ("write_file", {"path": "notes/task.txt", "content": task})
    elif len(results) == 1:
        call = ("run_python", {"code": "print(open('notes/task.txt').read().upper())"})
    else:
        return {"role": "assistant", "content": f"Done: {results[-1].get('stdout', results[-1]).strip()}"}
    name, arguments = call
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{len(results)}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    ]}  # fmt: skip


def handler(model: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.command} {self.path}\n")

        def _send(self, payload: Any, content_type: str = "application/json", status: int = 200) -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send({"status": "ok"})
            elif self.path == "/metrics":
                self._send((b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nshoal:kv_blocks_total 1000\n"
                            b"shoal:free_blocks 1000\nshoal:kv_blocks_cached 0\nshoal:pinned_blocks 0\n"
                            b"shoal:kv_block_size 16\n"), "text/plain")  # fmt: skip
            elif self.path == "/v1/models":
                self._send({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})
            else:
                self._send({"error": {"message": f"no route {self.path}"}}, status=404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path.startswith("/v1/programs/") and self.path.endswith("/release"):
                self._send({"released_blocks": 0})
                return
            if self.path != "/v1/chat/completions":
                self._send({"error": {"message": f"no route {self.path}"}}, status=404)
                return
            assert {t["function"]["name"] for t in body["tools"]} >= {"write_file", "run_python"}
            message = next_message(body["messages"])
            self._send({
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                          "prompt_tokens_details": {"cached_tokens": 0}},
            })  # fmt: skip

    return Handler


def main(argv: list[str] | None = None) -> int:
    return serve_main("scripted_engine", handler, argv)


if __name__ == "__main__":
    sys.exit(main())
