"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server returns goes through here, including FastAPI's own
validation errors, unknown routes and unexpected exceptions, so clients (the openai
SDK maps status codes to exception classes) always see the same JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("shoal.engine.server")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


def too_many_requests(retry_after_s: int) -> APIError:
    return APIError(
        429,
        "The server is at capacity (waiting queue full); retry later.",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, code=code)


def draining(retry_after_s: int) -> APIError:
    return APIError(
        503, "The server is shutting down; retry on another replica.", code="server_draining",
        headers={"Retry-After": str(retry_after_s)},
    )  # fmt: skip


class RequestFailedError(APIError):
    """A step that held this request raised; the request is over, the engine goes on."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            500, f"The request failed in the engine: {cause}", type="server_error", code="engine_step_failed"
        )


class BodyTooLarge(Exception):
    """Raised while reading a request body past the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class BodyTimeout(Exception):
    """Raised while reading a request body past the body read deadline."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.timeout_s = timeout_s


def body_timeout(timeout_s: float) -> APIError:
    return APIError(
        408, f"The request body was not received within {timeout_s:g} seconds.", code="request_timeout",
        headers={"Connection": "close"},
    )  # fmt: skip


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"Request body exceeds {limit} bytes.", code="request_too_large")


_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "str", "int", "float", "bool", "body"})


def _is_field(part: object) -> bool:
    """Whether a pydantic location part is a field or index (not a union member or a tag)."""
    if isinstance(part, int):
        return True
    text = str(part)
    return text.isidentifier() and text not in _TAGS


def from_validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The most specific problem of a pydantic error as a 400 naming the parameter."""
    errors = exc.errors()
    if not errors:
        return bad_request("Invalid request.")
    # Union members each report a failure; the deepest one names the real problem.
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    if any(e.get("type") in ("json_invalid", "json_type") for e in errors):
        first = next(e for e in errors if e.get("type") in ("json_invalid", "json_type"))
    param = ".".join(str(part) for part in first.get("loc", ()) if _is_field(part)) or None
    if first.get("type") in ("json_invalid", "json_type"):
        return bad_request(f"Malformed JSON body: {first.get('msg', '')}", code="invalid_json")
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    where = f" ({param})" if param else ""
    more = f" and {len(errors) - 1} more error(s)" if len(errors) > 1 else ""
    return bad_request(f"{msg}{where}{more}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the app can raise to an OpenAI-shaped response."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError | RequestValidationError)
        return from_validation_error(exc).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return body_too_large(exc.limit).response()

    async def slow_body(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTimeout)
        return body_timeout(exc.timeout_s).response()

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return APIError(500, f"Internal server error: {type(exc).__name__}").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_exception_handler(BodyTimeout, slow_body)
    app.add_exception_handler(Exception, unexpected)
