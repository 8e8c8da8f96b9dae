"""What the router sends upstream: the body (model rewritten, client priority stripped) and
the headers (forwarded ones plus the trusted tenant, salt and priority)."""

from __future__ import annotations

import json
from collections.abc import Collection

from shoal.router.errors import bad_request
from shoal.router.openai_request import PROGRAM_HEADER, SESSION_HEADER, ParsedRequest
from shoal.router.tenancy import PRIORITY_HEADER, SALT_HEADER, TENANT_HEADER

_FORWARD_HEADERS = ("accept", "x-request-id", PROGRAM_HEADER, SESSION_HEADER, "traceparent", "tracestate")


def trusted_priority(parsed: ParsedRequest, key_name: str | None, priority_keys: Collection[str]) -> int | None:
    """The body's ``priority`` when this key may set one (``auth.priorityKeys``), else None."""
    value = parsed.body.get("priority")
    if key_name is None or key_name not in priority_keys:
        return None
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad_request("'priority' must be an integer", "priority")
    return value


def upstream_body(parsed: ParsedRequest, forward_model: str) -> bytes:
    """The request body for the engine: the client's bytes when nothing needs rewriting."""
    body = parsed.body
    extra = body.get("extra_body")
    untrusted_priority = "priority" in body or (isinstance(extra, dict) and "priority" in extra)
    if forward_model == parsed.model and parsed.raw and not untrusted_priority:
        return parsed.raw
    # Priority travels in the trusted header only (set by upstream_headers when allowed).
    out = {k: v for k, v in body.items() if k != "priority"}
    if isinstance(extra, dict) and "priority" in extra:
        out["extra_body"] = {k: v for k, v in extra.items() if k != "priority"}
    out["model"] = forward_model
    return json.dumps(out).encode()


def upstream_headers(
    headers: dict[str, str], auth: dict[str, str], tenant: str, salt: str, priority: int | None
) -> dict[str, str]:
    """The request headers for the engine."""
    out = {"content-type": "application/json", **auth}
    for name in _FORWARD_HEADERS:
        value = headers.get(name)
        if value is not None:
            out[name] = value
    # Trusted headers come from the router only: a client's own x-shoal-tenant etc. never pass.
    out[TENANT_HEADER] = tenant
    out[SALT_HEADER] = salt
    if priority is not None:
        out[PRIORITY_HEADER] = str(priority)
    return out
