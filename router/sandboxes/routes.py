"""``POST /v1/programs/{id}/tools/{name}``: run one of a program's tools in its sandbox.

Body: ``{"arguments": {...} | "<JSON text>", "timeout_s"?: s, "max_output_bytes"?: n}``; the
arguments (as JSON text) are the tool's stdin. The call's timeout and output limit are
the tool's, lowered (never raised) by the request. The answer is the result, also when the
tool fails (its exit code says so); only a request the router cannot serve is an error.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.router.errors import RouterError, bad_request, payload_too_large
from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import SandboxError, SandboxUnavailable
from shoal.router.sandboxes.manager import SandboxDiskFull, SandboxLimitReached, SandboxManager, sandbox_key

log = logging.getLogger("shoal.router.sandboxes")
TOOL_PATH = "/v1/programs/{program_id:path}/tools/{tool}"
ANONYMOUS = "anonymous"
PREPARE_ALLOWANCE_S = 600.0


class ProgramGateway(Protocol):
    """What the program registry offers the tool API (the program scheduler implements it)."""

    def lookup(
        self, program_id: str, tenant: str, /
    ) -> ProgramClassConfig | Awaitable[ProgramClassConfig | None] | None:
        """The class of ``tenant``'s program ``program_id`` (None: no such program for this tenant)."""
        ...

    def tool_started(self, program_id: str, tenant: str, timeout_s: float, /) -> int | None:
        """A tool call begins (the program stays leased while it runs); returns a token."""
        ...

    def tool_finished(
        self, program_id: str, tool: str, duration_s: float | None, tenant: str, token: int | None = None, /
    ) -> None:
        """A tool call ended after ``duration_s`` (None: it failed before finishing); feeds the
        scheduler's per-tool statistics."""
        ...


TenantOf = Callable[[Mapping[str, str]], str | None]
"""Lower-cased request headers -> the tenant (API key name or trusted tenant header; None or
``anonymous`` when auth is off); raises RouterError 401 for a bad key."""


class ToolCallRequest(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] | list[Any] | str = Field(default_factory=dict)
    """The tool call's arguments: a JSON value, or JSON text (as OpenAI tool calls carry them)."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Lower this call's wall-clock limit below the tool's ``timeoutS``."""
    max_output_bytes: int | None = Field(default=None, ge=1)
    """Lower this call's stdout/stderr limit below the tool's ``maxOutputBytes``."""

    def stdin(self) -> bytes:
        if isinstance(self.arguments, str):
            try:
                json.loads(self.arguments)
            except ValueError:
                raise bad_request("arguments: not valid JSON text", "arguments") from None
            return self.arguments.encode()
        return json.dumps(self.arguments, separators=(",", ":")).encode()


def not_found(message: str, code: str, param: str | None = None) -> RouterError:
    return RouterError(404, message, "invalid_request_error", code, param)


class ToolEndpoint:
    """The handler; ``lookup`` scopes every program to its tenant (others get 404: ids do not leak)."""

    def __init__(
        self, manager: SandboxManager, gateway: ProgramGateway, tenant_of: TenantOf, max_body_bytes: int
    ) -> None:
        self.manager = manager
        self.gateway = gateway
        self.tenant_of = tenant_of
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except RouterError as err:
            return err.response()
        except Exception:  # a bug or a broken host: logged, and still an OpenAI-style answer
            log.exception("tool call %s failed", request.url.path)
            return RouterError(500, "The tool call failed inside the router.", "server_error", "sandbox_error").response()

    async def _handle(self, request: Request) -> Response:
        tenant = self.tenant_of({k.lower(): v for k, v in request.headers.items()}) or ANONYMOUS
        program_id: str = request.path_params["program_id"]
        tool: str = request.path_params["tool"]
        body = await self._read_body(request)
        try:
            call = ToolCallRequest.model_validate_json(body or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise bad_request(f"{where}: {first['msg']}", where) from None
        stdin = call.stdin()
        found = self.gateway.lookup(program_id, tenant)
        cls = await found if inspect.isawaitable(found) else found
        if cls is None:
            raise not_found(f"No program {program_id!r}.", "program_not_found")
        if cls.tool(tool) is None or cls.sandbox is None:
            raise not_found(f"Program class {cls.name!r} has no tool {tool!r}.", "tool_not_found", "tool")
        spec = cls.tool(tool)
        assert spec is not None
        # Preparing a cold sandbox comes before the run's own timeout: allow for it generously,
        # the deadline only matters if this handler never reaches its finally.
        token = self.gateway.tool_started(program_id, tenant, spec.timeout_s + PREPARE_ALLOWANCE_S)
        duration_s: float | None = None
        try:
            result = await self.manager.run_tool(
                sandbox_key(tenant, program_id), cls, tool, stdin, timeout_s=call.timeout_s, max_output_bytes=call.max_output_bytes
            )
            duration_s = result.duration_s
        except SandboxDiskFull as exc:
            raise RouterError(409, str(exc), "invalid_request_error", "sandbox_disk_full") from None
        except SandboxLimitReached as exc:
            raise RouterError(503, str(exc), "service_unavailable", "sandbox_limit", headers={"Retry-After": "5"}) from None
        except SandboxUnavailable as exc:
            raise RouterError(503, str(exc), "service_unavailable", "sandbox_unavailable") from None
        except SandboxError as exc:
            raise RouterError(503, str(exc), "service_unavailable", "sandbox_failed") from None
        finally:
            self.gateway.tool_finished(program_id, tool, duration_s, tenant, token)
        return JSONResponse(result.to_json())

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise payload_too_large(self.max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise payload_too_large(self.max_body_bytes)
            chunks.append(chunk)
        return b"".join(chunks)


def mount_tool_routes(
    app: FastAPI, manager: SandboxManager, gateway: ProgramGateway, tenant_of: TenantOf,
    max_body_bytes: int = 1 << 20,
) -> None:  # fmt: skip
    """Serve the tool API on ``app``. The app's lifespan must ``await manager.start()`` / ``stop()``."""
    app.router.routes.append(
        Route(TOOL_PATH, ToolEndpoint(manager, gateway, tenant_of, max_body_bytes).handle, methods=["POST"])
    )
