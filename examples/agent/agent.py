"""A small agent on the official ``openai`` client, running its tools in Shoal's sandboxes.

    python examples/agent/agent.py --base-url http://127.0.0.1:8080/v1 \
        --program examples/agent/agentprogram.yaml "Write a haiku to notes/haiku.txt, then read it back."

The loop: call the model with the AgentProgram's tools; run each tool call through the
router's tool API (``POST /v1/programs/{id}/tools/{name}``: the program's sandbox, JSON
arguments on stdin); send the results back; stop when the model answers without a tool
call (or after ``--max-turns``); release the program (its sandbox and KV pins) at the end.
Prints every step and the final answer; exits 1 with a one-line message on any error.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI, OpenAIError

SYSTEM = (
    "You are an agent with a private workspace. Use the tools to do the task; call one tool at a time "
    "and wait for its result. When the task is done, answer with a short summary and no tool call."
)


class AgentError(Exception):
    """A one-line reason the agent stopped."""


def load_program(path: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """(class name, model, OpenAI tool definitions) of an AgentProgram manifest."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AgentError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "AgentProgram":
        raise AgentError(f"{path}: not an AgentProgram manifest")
    spec = doc.get("spec") or {}
    tools = [
        {"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description", ""),
            "parameters": {"type": "object", "additionalProperties": True},
        }}
        for tool in spec.get("tools") or []
    ]  # fmt: skip
    if not tools:
        raise AgentError(f"{path}: the AgentProgram declares no tools")
    return doc["metadata"]["name"], spec["model"], tools


class ToolApi:
    """The router's program endpoints for one program."""

    def __init__(self, root: str, api_key: str, program_id: str) -> None:
        self.http = httpx.Client(base_url=root, headers={"Authorization": f"Bearer {api_key}"}, timeout=600,
                                 trust_env=False)  # fmt: skip
        self.program = program_id

    def check_class(self, name: str) -> None:
        r = self.http.get("/v1/programs/classes")
        if r.status_code != 200:
            raise AgentError(f"GET /v1/programs/classes: {r.status_code} {r.text[:200]}")
        if name not in [c["name"] for c in r.json()["data"]]:
            raise AgentError(f"the router has no program class {name!r} (is the AgentProgram applied?)")

    def run(self, tool: str, arguments: str) -> dict[str, Any]:
        r = self.http.post(f"/v1/programs/{self.program}/tools/{tool}", json={"arguments": arguments or "{}"})
        if r.status_code == 200:
            result: dict[str, Any] = r.json()
            return result
        if r.status_code in (400, 404):  # the model's mistake (bad arguments, unknown tool): tell it
            return {"error": r.json().get("error", {}).get("message", r.text)}
        raise AgentError(f"tool {tool}: router answered {r.status_code}: {r.text[:200]}")

    def release(self) -> None:
        r = self.http.post(f"/v1/programs/{self.program}/release")
        if r.status_code not in (200, 404):  # 404: never created (no model call) or already ended
            raise AgentError(f"release: {r.status_code} {r.text[:200]}")
        self.http.close()


def run_agent(base_url: str, api_key: str, program_file: Path, task: str, max_turns: int,
              program_id: str | None = None, max_tokens: int = 512) -> str:  # fmt: skip
    """Run the loop; returns the model's final answer."""
    class_name, model, tools = load_program(program_file)
    program_id = program_id or f"agent-{uuid.uuid4().hex[:12]}"
    api = ToolApi(base_url.removesuffix("/").removesuffix("/v1"), api_key, program_id)
    llm = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    try:
        api.check_class(class_name)
        for turn in range(1, max_turns + 1):
            reply = llm.chat.completions.create(
                model=model, messages=messages, tools=tools, temperature=0, max_tokens=max_tokens,  # type: ignore[arg-type]
                extra_body={"program_id": program_id, "program_class": class_name},
            ).choices[0].message
            messages.append(reply.model_dump(exclude_none=True, exclude_unset=True))
            if not reply.tool_calls:
                print(f"[turn {turn}] answer: {reply.content}", flush=True)
                return reply.content or ""
            for call in reply.tool_calls:
                name, arguments = call.function.name, call.function.arguments  # type: ignore[union-attr]
                result = api.run(name, arguments)
                print(f"[turn {turn}] {name}({arguments}) -> {json.dumps(result)[:300]}", flush=True)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
        raise AgentError(f"no final answer after {max_turns} turns")
    except OpenAIError as exc:
        raise AgentError(f"model call failed: {exc}") from None
    except httpx.HTTPError as exc:
        raise AgentError(f"router unreachable: {exc}") from None
    finally:
        api.release()
        print(f"released program {program_id}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="the router's OpenAI base URL")
    parser.add_argument("--api-key", default="none", help="a router API key (when auth is on)")
    parser.add_argument("--program", type=Path, default=Path(__file__).with_name("agentprogram.yaml"),
                        help="the AgentProgram manifest (class, model, tools)")  # fmt: skip
    parser.add_argument("--program-id", default=None, help="default: a new random id")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512, help="per model reply")
    args = parser.parse_args(argv)
    try:
        run_agent(args.base_url, args.api_key, args.program, args.task, args.max_turns, args.program_id,
                  args.max_tokens)
    except AgentError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
