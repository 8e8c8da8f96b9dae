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

from shoal.operator.builders.common import ROUTER_PORT
from shoal.router.programs.config import ProgramClassConfig

CLASSES_PATH = "/v1/programs/classes"
URL_TEMPLATE_ENV = "SHOAL_ROUTER_URL_TEMPLATE"
DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:{port}"
"""How the operator reaches a router: its Service in the router's namespace."""
POD_URL_TEMPLATE_ENV = "SHOAL_ROUTER_POD_URL_TEMPLATE"
DEFAULT_POD_URL_TEMPLATE = "http://{pod_ip}:{port}"
"""How the operator reaches one replica of a router with several."""


Version = tuple[tuple[str, Any], ...]
"""The settings a router reports for a class (model, priority, ...): tells whether it runs the
AgentProgram's latest version."""


@dataclass(frozen=True)
class ClassReport:
    """One loaded class and its programs, as the router (all its replicas together) reports them."""

    name: str
    active: int = 0
    paused: int = 0
    queued: int = 0
    steps_per_minute: float = 0.0
    versions: tuple[Version, ...] = ()
    """Each distinct version the replicas run (empty: the router does not report settings)."""
    loaded_by: int = 1
    """Router replicas that have the class loaded."""


@dataclass(frozen=True)
class RouterClasses:
    """A router's answer: its loaded classes, and why its classes file was not loaded (if so)."""

    classes: dict[str, ClassReport]
    file_error: str | None = None
    replicas: int = 1
    """Router replicas that answered."""


def merge_replicas(answers: list[RouterClasses]) -> RouterClasses:
    """One answer for a router from each replica's: counts summed (each program lives on one
    replica), versions collected, and how many replicas loaded each class."""
    merged: dict[str, ClassReport] = {}
    for answer in answers:
        for name, r in answer.classes.items():
            m = merged.get(name, ClassReport(name, loaded_by=0))
            merged[name] = ClassReport(
                name,
                m.active + r.active,
                m.paused + r.paused,
                m.queued + r.queued,
                m.steps_per_minute + r.steps_per_minute,
                tuple(dict.fromkeys((*m.versions, *r.versions))),
                m.loaded_by + r.loaded_by,
            )
    errors = [a.file_error for a in answers if a.file_error]
    return RouterClasses(merged, "; ".join(dict.fromkeys(errors)) or None, sum(a.replicas for a in answers))


@dataclass(frozen=True)
class RouterAddress:
    """Where a Router's API is, and the API key to show it when it has auth on."""

    namespace: str
    name: str
    service: str
    port: int
    api_key: str | None = None
    pod_ip: str | None = None
    """One replica's pod IP (several replicas: each is asked); None: the Service."""


class ClassesUnavailable(Exception):
    """The router did not answer with its classes; the message says why (one line)."""


FetchClasses = Callable[[RouterAddress], Awaitable[RouterClasses]]
"""Router -> its loaded classes; raises ClassesUnavailable."""

VERSION_FIELDS = ("model", "priority", "max_concurrent_programs", "lease_seconds", "tools")
"""Class settings the router reports back (``GET /v1/programs/classes``)."""


def version_of(cls: ProgramClassConfig) -> Version:
    """What the router would report for ``cls`` (compared with a ClassReport's ``versions``)."""
    values = {
        "model": cls.model,
        "priority": cls.priority,
        "max_concurrent_programs": cls.max_concurrent_programs,
        "lease_seconds": float(cls.lease_seconds),
        "tools": tuple(t.name for t in cls.tools),
    }
    return tuple(values.items())


def _count(entry: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ClassesUnavailable(f"class {entry.get('name')!r}: {key} is not a count: {value!r}")
    return kind(value)


def _version(entry: dict[str, Any]) -> Version:
    out: list[tuple[str, Any]] = []
    for key in VERSION_FIELDS:
        if key not in entry:
            return ()  # a router that does not report its settings: names only
        value = entry[key]
        if key == "tools":
            value = tuple(value) if isinstance(value, list) else value
        elif key == "lease_seconds" and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        out.append((key, value))
    return tuple(out)


def parse_classes(payload: Any) -> RouterClasses:
    """The router's ``{"data": [{"name", "active", "paused", "queued", "steps_per_minute", ...}],
    "error": null | "why the classes file was not loaded"}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ClassesUnavailable("the router's answer has no 'data' list of classes")
    out: dict[str, ClassReport] = {}
    for entry in payload["data"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ClassesUnavailable(f"a class without a name in the router's answer: {entry!r}"[:200])
        out[entry["name"]] = ClassReport(
            name=entry["name"],
            active=_count(entry, "active", int),
            paused=_count(entry, "paused", int),
            queued=_count(entry, "queued", int),
            steps_per_minute=_count(entry, "steps_per_minute", float),
            versions=(version,) if (version := _version(entry)) else (),
        )
    error = payload.get("error")
    return RouterClasses(out, " ".join(str(error).split())[:500] if error else None)


class RouterJsonGetter:
    """GET a JSON document from a router: its Service, or one replica's pod IP (URL templates)."""

    path = "/"

    def __init__(self, url_template: str | None = None, timeout_s: float = 3.0) -> None:
        self.url_template = url_template or os.environ.get(URL_TEMPLATE_ENV) or DEFAULT_URL_TEMPLATE
        self.pod_url_template = os.environ.get(POD_URL_TEMPLATE_ENV) or DEFAULT_POD_URL_TEMPLATE
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def url(self, router: RouterAddress) -> str:
        if router.pod_ip is not None:
            base = self.pod_url_template.format(pod_ip=router.pod_ip, port=ROUTER_PORT)
        else:
            base = self.url_template.format(
                namespace=router.namespace, name=router.name, service=router.service, port=router.port
            )
        return base.rstrip("/") + self.path

    async def get_json(self, router: RouterAddress, unavailable: type[Exception], authorize: bool) -> Any:
        """The decoded body of a 200 answer; anything else raises ``unavailable`` with the reason."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        url = self.url(router)
        headers = {"Authorization": f"Bearer {router.api_key}"} if authorize and router.api_key else {}
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status != 200:
                    raise unavailable(f"GET {url}: HTTP {resp.status}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise unavailable(f"GET {url}: {type(exc).__name__}: {exc}"[:300]) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpClassesFetcher(RouterJsonGetter):
    """GET the classes from each router (they name tenants' programs: the router's key is sent)."""

    path = CLASSES_PATH

    async def __call__(self, router: RouterAddress) -> RouterClasses:
        return parse_classes(await self.get_json(router, ClassesUnavailable, authorize=True))
