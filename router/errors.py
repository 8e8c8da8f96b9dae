"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response


class RouterError(Exception):
    """An error the router answers itself (the engines are not contacted, or all failed)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> Response:
        return Response(
            json.dumps(self.body()), status_code=self.status, media_type="application/json", headers=self.headers
        )


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_error_event(message: str, type_: str = "server_error", code: str | None = "upstream_error") -> bytes:
    """An SSE event carrying an error (the openai SDK raises it as an APIError), then ``[DONE]``."""
    payload = json.dumps(error_body(message, type_, code))
    return f"data: {payload}\n\ndata: [DONE]\n\n".encode()


def bad_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, message, "invalid_request_error", "invalid_request", param)


def unauthorized(message: str = "Incorrect or missing API key.") -> RouterError:
    return RouterError(
        401, message, "authentication_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def model_not_found(model: str) -> RouterError:
    return RouterError(404, f"The model {model!r} does not exist.", "invalid_request_error", "model_not_found", "model")


def payload_too_large(limit: int) -> RouterError:
    return RouterError(413, f"Request body larger than {limit} bytes.", "invalid_request_error", "payload_too_large")


def rate_limited(retry_after_s: float) -> RouterError:
    seconds = max(1, int(retry_after_s + 0.999))
    return RouterError(
        429,
        f"Rate limit reached; retry after {seconds} s.",
        "rate_limit_error",
        "rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


def no_endpoint(message: str) -> RouterError:
    return RouterError(503, message, "service_unavailable", "no_healthy_endpoint")


def upstream_failed(message: str) -> RouterError:
    return RouterError(502, message, "server_error", "upstream_error")


def upstream_timeout(message: str) -> RouterError:
    return RouterError(504, message, "server_error", "upstream_timeout")


def all_engines_full(retry_after: str | None) -> RouterError:
    """Every engine tried answered 429; the engine's Retry-After is passed on."""
    seconds = retry_after if retry_after and retry_after.strip().isdigit() else "1"
    return RouterError(
        429,
        "All engines are at capacity; retry later.",
        "rate_limit_error",
        "engine_overloaded",
        headers={"Retry-After": seconds},
    )


def body_timeout(timeout_s: float) -> RouterError:
    # The rest of the body may still arrive: the connection cannot carry another request.
    return RouterError(408, f"Request body not received within {timeout_s:g} s.", "invalid_request_error",
                       "request_timeout", headers={"Connection": "close"})


def http_error(status: int, detail: str) -> RouterError:
    """A framework-level HTTP error (unknown path, wrong method) in OpenAI's shape."""
    messages = {404: "Not found.", 405: "Method not allowed."}
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return RouterError(status, messages.get(status, detail), "invalid_request_error", code)
