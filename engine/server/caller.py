"""Who a request comes from: the trusted x-shoal-* headers (docs/contracts.md, Tenancy)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from shoal.engine.server.errors import bad_request
from shoal.engine.server.middleware import TRUSTED_SCOPE_KEY

TENANT_HEADER = "x-shoal-tenant"
CACHE_SALT_HEADER = "x-shoal-cache-salt"
PRIORITY_HEADER = "x-shoal-priority"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as far as the engine may believe it."""

    tenant: str = ""
    """Owner of program pins (x-shoal-tenant); "" for direct callers that send none."""
    cache_salt: str = ""
    """Prefix-cache salt (x-shoal-cache-salt): only requests with equal salts share cached blocks."""
    priority: int = 0
    """Scheduling priority, higher first (x-shoal-priority, else the body's ``priority``)."""


def caller_of(request: Request, body_priority: int = 0) -> Caller:
    """The caller's tenant, cache salt and priority.

    Honoured only from a trusted caller (one that passed the API key check, or any caller
    of a keyless engine, which trusts its network); from anyone else they are ignored.
    """
    if not request.scope.get(TRUSTED_SCOPE_KEY, False):
        return Caller()
    headers = request.headers
    priority = body_priority
    raw = headers.get(PRIORITY_HEADER)
    if raw is not None:
        try:
            priority = int(raw)
        except ValueError:
            raise bad_request(f"{PRIORITY_HEADER} must be an integer, got {raw[:32]!r}") from None
    if not -(2**31) <= priority < 2**31:
        raise bad_request(f"priority must be a 32-bit integer, got {priority}", param="priority")
    return Caller(headers.get(TENANT_HEADER, ""), headers.get(CACHE_SALT_HEADER, ""), priority)
