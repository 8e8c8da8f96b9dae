"""Tenant identity, the per-tenant prefix-cache salt, and the router's own credential to engines.

A tenant is the API key's name (or a trusted gateway's header); engines learn it, and the
cache salt, only from the router's trusted headers, which clients cannot set (see
``TRUSTED_HEADERS``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from shoal.router.config import TenancyConfig, UpstreamConfig
from shoal.router.errors import bad_request

ANONYMOUS = "anonymous"
"""The tenant of every request when auth is off (keyless deployments trust every client)."""
TENANT_HEADER = "x-shoal-tenant"
SALT_HEADER = "x-shoal-cache-salt"
PRIORITY_HEADER = "x-shoal-priority"
TRUSTED_HEADERS = frozenset({TENANT_HEADER, SALT_HEADER, PRIORITY_HEADER})
"""Headers engines trust from the router only; never copied from a client's request."""
_MAX_TENANT_CHARS = 256


def upstream_api_key(cfg: UpstreamConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The engines' API key from the configured source; raises ValueError when it is configured but missing."""
    env = os.environ if environ is None else environ
    if cfg.api_key_env is not None:
        key = env.get(cfg.api_key_env, "").strip()
        if not key:
            raise ValueError(f"upstream.apiKeyEnv: environment variable {cfg.api_key_env} is not set or empty")
        return key
    if cfg.api_key_file is not None:
        try:
            key = Path(cfg.api_key_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"upstream.apiKeyFile: cannot read {cfg.api_key_file}: {exc.strerror}") from None
        if not key:
            raise ValueError(f"upstream.apiKeyFile: {cfg.api_key_file} is empty")
        return key
    return None


def upstream_auth_headers(api_key: str | None) -> dict[str, str]:
    """What every upstream request carries (data and control path)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class Tenancy:
    """Resolves a request's tenant and its cache salt."""

    def __init__(self, cfg: TenancyConfig, salt_secret: str | None) -> None:
        self._cfg = cfg
        self._header = cfg.tenant_header.lower() if cfg.tenant_header else None
        # The salt is a keyed hash of the tenant: stable across router replicas that share the
        # secret (the upstream credential when there is one), and never the client's key itself.
        secret = (salt_secret or "shoal-cache-salt").encode()
        self.salt = lru_cache(maxsize=4096)(lambda tenant: self._salt(secret, tenant))

    def tenant(self, key_name: str | None, headers: Mapping[str, str]) -> str:
        """The gateway's tenant header when configured and present, else the key name, else anonymous."""
        if self._header is not None:
            value = headers.get(self._header, "").strip()
            if value:
                if len(value) > _MAX_TENANT_CHARS or not (value.isascii() and value.isprintable()):
                    raise bad_request(f"invalid {self._cfg.tenant_header} header")
                return value
        return key_name or ANONYMOUS

    def _salt(self, secret: bytes, tenant: str) -> str:
        if self._cfg.cache_sharing == "shared":
            return ""
        return hmac.new(secret, tenant.encode(), hashlib.sha256).hexdigest()[:32]
