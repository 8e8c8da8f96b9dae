"""API keys and per-key token-bucket rate limits.

Keys are compared in constant time (``hmac.compare_digest`` against every stored key),
and only a key's *name* ever leaves this module: never the key, in logs or metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.router.config import AuthConfig, RateLimit, RateLimitsConfig
from shoal.router.errors import rate_limited, unauthorized

log = logging.getLogger("shoal.router.auth")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _anonymous_name(key: str) -> str:
    # A short hash: stable across restarts and reorderings, useless for guessing the key.
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str) -> dict[str, str]:
    """``KEY`` or ``NAME:KEY`` per line or comma-separated item; '#' starts a comment line."""
    keys: dict[str, str] = {}
    for raw in text.replace(",", "\n").splitlines():
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = _anonymous_name(item), item
        name, key = name.strip(), key.strip()
        if key:
            keys[name] = key
    return keys


def read_keys_path(path: Path) -> dict[str, str]:
    """A key file, or a directory with one key per file (a mounted Secret; dot-files skipped)."""
    if path.is_dir():
        keys: dict[str, str] = {}
        for item in sorted(path.iterdir()):
            if item.name.startswith(".") or not item.is_file():
                continue
            value = item.read_text().strip()
            if value:
                keys[item.name] = value
        return keys
    return parse_keys(path.read_text())


@dataclass(frozen=True)
class _Stored:
    name: str
    digest: bytes


class KeyStore:
    """The accepted keys; ``authenticate`` returns the caller's key name."""

    def __init__(self, cfg: AuthConfig, clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._environ = environ if environ is not None else os.environ
        self._keys: tuple[_Stored, ...] = ()
        self._file_stamp: object = None
        self._next_check = 0.0
        self.reload(force=True)

    @property
    def enabled(self) -> bool:
        return self._cfg.enabled

    def _stamp(self, path: Path) -> object:
        if path.is_dir():
            return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(path.iterdir()))
        return path.stat().st_mtime_ns

    def reload(self, force: bool = False) -> None:
        """Re-read the key sources (the file only when it changed, unless ``force``)."""
        keys: dict[str, str] = {}
        if self._cfg.api_keys_env:
            keys.update(parse_keys(self._environ.get(self._cfg.api_keys_env, "")))
        if self._cfg.api_keys_file:
            path = Path(self._cfg.api_keys_file)
            try:
                stamp = self._stamp(path)
                if not force and stamp == self._file_stamp:
                    return
                keys.update(read_keys_path(path))
                self._file_stamp = stamp
            except OSError as exc:
                log.error("cannot read API keys from %s: %s", path, exc.strerror)
                if not force:
                    return  # keep the previous keys
        self._keys = tuple(_Stored(name, _digest(key)) for name, key in keys.items())
        if self.enabled and not self._keys:
            log.warning("auth is enabled but no API keys are configured: every request will get 401")

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._cfg.api_keys_file and now >= self._next_check:
            self._next_check = now + self._cfg.reload_interval_s
            self.reload()

    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The key name of a valid key, None when auth is off; raises RouterError 401 otherwise."""
        if not self.enabled:
            return None
        self._maybe_reload()
        presented = _presented_key(headers)
        if presented is None:
            raise unauthorized("Missing API key. Send 'Authorization: Bearer <key>'.")
        candidate = _digest(presented)
        match: str | None = None
        for stored in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(candidate, stored.digest):
                match = stored.name
        if match is None:
            raise unauthorized()
        return match


def _presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    other = headers.get("x-api-key") or headers.get("api-key")
    return other.strip() if other and other.strip() else None


class TokenBucket:
    """Classic token bucket; ``take`` returns 0 when allowed, else the seconds to wait."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available (0 now); takes nothing."""
        self._refill(now)
        if amount > self.capacity:  # can never fit: charge what fits, make it wait a full refill
            amount = self.capacity
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """Per-key request (and optional LLM-token) buckets. Bounded: idle buckets are dropped LRU."""

    def __init__(self, cfg: RateLimitsConfig, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._cfg = cfg
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[TokenBucket, TokenBucket | None]] = OrderedDict()

    def _limit(self, key: str) -> RateLimit | None:
        return self._cfg.per_key.get(key, self._cfg.default)

    def check(self, key: str, tokens: int = 0) -> None:
        """Charge one request (and ``tokens``) to ``key``; raises RouterError 429 with Retry-After."""
        limit = self._limit(key)
        if limit is None:
            return
        now = self._clock()
        pair = self._buckets.get(key)
        if pair is None:
            req_bucket = TokenBucket(limit.requests_per_second, limit.burst, now)
            tok_bucket = None
            if limit.tokens_per_second is not None:
                cap = limit.token_burst or int(limit.tokens_per_second * 10)
                tok_bucket = TokenBucket(limit.tokens_per_second, max(cap, 1), now)
            pair = (req_bucket, tok_bucket)
            self._buckets[key] = pair
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        req_bucket, tok_bucket = pair
        wait = req_bucket.wait_for(1, now)
        if tok_bucket is not None:
            wait = max(wait, tok_bucket.wait_for(tokens, now))
        if wait > 0:
            raise rate_limited(wait)
        req_bucket.take(1)
        if tok_bucket is not None:
            tok_bucket.take(tokens)
