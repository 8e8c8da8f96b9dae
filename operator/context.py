"""What the controllers share: dependencies, outcome exceptions, and spec validation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shoal.crds import Reason, explain
from shoal.operator.builders.common import Images
from shoal.operator.kube import KubeClient, ResourceType
from shoal.operator.router_classes import FetchClasses
from shoal.operator.status import invalid, merge_conditions, now_rfc3339

SpecT = TypeVar("SpecT", bound=BaseModel)

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 56
"""Longest resource name: children add a suffix (``-engine``, ``-router``) within the 63-character label limit."""


@dataclass(frozen=True)
class Ctx:
    """Dependencies of the controllers (kept in kopf's memo)."""

    kube: KubeClient
    images: Images
    keda: bool = False
    """KEDA's ScaledObject API exists: autoscale with KEDA instead of an HPA."""
    check_secrets: bool = True
    """Check that a Router's API-key Secret exists (needs get on Secrets; off: pods wait for it instead)."""
    fetch_classes: FetchClasses | None = None
    """Asks a router which program classes it has loaded (AgentProgram status); None: never asked."""
    _locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    _program_namespaces: set[str] = field(default_factory=set)
    _owners: set[tuple[str, str, str]] = field(default_factory=set)
    _converged: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def saw_owner(self, kind: str, namespace: str, name: str) -> None:
        """Record a ModelPool or Router the periodic resync converges (kopf resumes every existing
        one at start, so an operator restart finds them all again)."""
        self._owners.add((kind, namespace, name))

    def forget_owner(self, kind: str, namespace: str, name: str) -> None:
        self._owners.discard((kind, namespace, name))

    def owners(self) -> list[tuple[str, str, str]]:
        """(kind, namespace, name) of every owner seen and not found gone since."""
        return sorted(self._owners)

    def note_converged(self, children: list[dict[str, Any]]) -> None:
        """Record children just found or made to match what Shoal applies (their resourceVersions)."""
        for child in children:
            meta = child.get("metadata") or {}
            key = (str(child.get("kind")), meta.get("namespace") or "default", str(meta.get("name")))
            self._converged[key] = str(meta.get("resourceVersion"))

    def is_converged(self, child: Mapping[str, Any]) -> bool:
        """Whether this version of a child is one Shoal already checked (e.g. the watch event of
        its own apply): converging its owner again would change nothing."""
        meta = child.get("metadata") or {}
        key = (str(child.get("kind")), meta.get("namespace") or "default", str(meta.get("name")))
        return meta.get("resourceVersion") is not None and self._converged.get(key) == str(meta["resourceVersion"])

    def forget_child(self, child: Mapping[str, Any]) -> None:
        meta = child.get("metadata") or {}
        self._converged.pop((str(child.get("kind")), meta.get("namespace") or "default", str(meta.get("name"))), None)

    def saw_program_in(self, namespace: str) -> None:
        """Record a namespace with AgentPrograms (the status poll lists only those: an operator
        watching some namespaces may not list cluster-wide)."""
        self._program_namespaces.add(namespace)

    def program_namespaces(self) -> list[str]:
        return sorted(self._program_namespaces)

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        """One lock per object: its read-compute-write status sequences never interleave."""
        return self._locks.setdefault((kind, namespace, name), asyncio.Lock())


class SpecRejected(Exception):
    """The spec cannot be acted on until it changes (kopf: PermanentError)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class NotReady(Exception):
    """Something the resource needs is missing or not ready yet (kopf: TemporaryError)."""

    def __init__(self, reason: Reason, message: str, delay: float = 15.0) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.delay = delay


def validate_spec(model: type[SpecT], body: dict[str, Any]) -> SpecT:
    """The typed spec of a resource body, or SpecRejected with the condition reason."""
    name = body["metadata"]["name"]
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise SpecRejected(
            Reason.SPEC_INVALID,
            f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME} characters",
        )
    try:
        return model.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise SpecRejected(*explain(exc)) from None


def try_spec(model: type[SpecT], body: dict[str, Any] | None) -> SpecT | None:
    """The typed spec, or None for a missing object or an invalid spec."""
    if body is None:
        return None
    try:
        return validate_spec(model, body)
    except SpecRejected:
        return None


def generation(body: dict[str, Any]) -> int | None:
    gen = body["metadata"].get("generation")
    return int(gen) if gen is not None else None


def degraded_reason(body: dict[str, Any]) -> str | None:
    """The reason of the current Degraded=True condition, if any."""
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Degraded" and c.get("status") == "True":
            return str(c.get("reason"))
    return None


async def report_problem(ctx: Ctx, rt: ResourceType, body: dict[str, Any], reason: Reason, message: str) -> None:
    """Write Ready/Progressing=False and Degraded=True with ``reason`` (not when ``body``, read
    recently, already says so); post a Warning Event when the problem is new."""
    meta = body["metadata"]
    old = (body.get("status") or {}).get("conditions")
    gen = generation(body)
    status = {"observedGeneration": gen, "conditions": merge_conditions(old, invalid(reason, message), gen, now_rfc3339())}
    if not status_unchanged(body, status):
        await ctx.kube.patch_status(rt, meta.get("namespace") or "default", meta["name"], status)
    previous = next((c for c in old or [] if c.get("type") == "Degraded"), None)
    if not previous or previous.get("reason") != reason.value or previous.get("message") != message:
        await ctx.kube.event(body, "Warning", reason.value, message)


def status_unchanged(body: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether merge-patching ``status`` into a freshly read body would change nothing."""
    current = body.get("status") or {}
    return all(current.get(k) == v for k, v in status.items())
