"""What a router reports about its program classes (``GET /v1/programs/classes``), fetched over HTTP.

The fetch is a plain callable in the controllers' context, so tests can answer it with a fake or
a real local router; in a cluster it goes through the router's Service DNS name.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

CLASSES_PATH = "/v1/programs/classes"
URL_TEMPLATE_ENV = "SHOAL_ROUTER_URL_TEMPLATE"
DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:{port}"
"""How the operator reaches a router: its Service in the router's namespace."""


@dataclass(frozen=True)
class ClassReport:
    """One loaded class and its programs, as the router reports them."""

    name: str
    active: int = 0
    paused: int = 0
    queued: int = 0
    steps_per_minute: float = 0.0


@dataclass(frozen=True)
class RouterAddress:
    """Where a Router's API is."""

    namespace: str
    name: str
    service: str
    port: int


class ClassesUnavailable(Exception):
    """The router did not answer with its classes; the message says why (one line)."""


FetchClasses = Callable[[RouterAddress], Awaitable[dict[str, ClassReport]]]
"""Router -> its loaded classes by name; raises ClassesUnavailable."""


def _count(entry: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ClassesUnavailable(f"class {entry.get('name')!r}: {key} is not a count: {value!r}")
    return kind(value)


def parse_classes(payload: Any) -> dict[str, ClassReport]:
    """The router's ``{"classes": [{"name", "active", "paused", "queued", "steps_per_minute"}]}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("classes"), list):
        raise ClassesUnavailable("the router's answer has no 'classes' list")
    out: dict[str, ClassReport] = {}
    for entry in payload["classes"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ClassesUnavailable(f"a class without a name in the router's answer: {entry!r}"[:200])
        out[entry["name"]] = ClassReport(
            name=entry["name"],
            active=_count(entry, "active", int),
            paused=_count(entry, "paused", int),
            queued=_count(entry, "queued", int),
            steps_per_minute=_count(entry, "steps_per_minute", float),
        )
    return out


class HttpClassesFetcher:
    """GET the classes from each router (the URL from a template, by default its Service)."""

    def __init__(self, url_template: str | None = None, timeout_s: float = 3.0) -> None:
        self.url_template = url_template or os.environ.get(URL_TEMPLATE_ENV) or DEFAULT_URL_TEMPLATE
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def url(self, router: RouterAddress) -> str:
        base = self.url_template.format(
            namespace=router.namespace, name=router.name, service=router.service, port=router.port
        )
        return base.rstrip("/") + CLASSES_PATH

    async def __call__(self, router: RouterAddress) -> dict[str, ClassReport]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        url = self.url(router)
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise ClassesUnavailable(f"GET {url}: HTTP {resp.status}")
                payload = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClassesUnavailable(f"GET {url}: {type(exc).__name__}: {exc}"[:300]) from None
        return parse_classes(payload)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
