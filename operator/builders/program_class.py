"""AgentProgram -> the router's program class (``ProgramClassConfig``), and the classes file.

The classes file is what the router re-reads while running; it is deliberately kept out of the
router pods' config hash, so adding or changing an AgentProgram never rolls the router.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError

from shoal.crds import AgentProgramSpec
from shoal.crds.agentprogram import SandboxTemplate
from shoal.router.programs.config import OwnerRef, ProgramClassConfig, ProgramClassesFile
from shoal.router.sandboxes.spec import SandboxResources, SandboxSpec, ToolSpec

LOCAL_RESOURCES = ("memory", "ephemeral-storage")
"""Sandbox resources the local backend enforces (RLIMIT_AS and the work directory size)."""


class ClassError(ValueError):
    """An AgentProgram that cannot become a router class here; the message is one line."""


def _resources(sandbox: SandboxTemplate) -> SandboxResources:
    kubernetes: dict[str, dict[str, str]] = {}
    if sandbox.resources is not None:
        for section in ("requests", "limits"):
            values = getattr(sandbox.resources, section)
            if values:
                kubernetes[section] = {k: str(v) for k, v in values.items()}
    return SandboxResources(
        memory_bytes=sandbox.limit_bytes("memory"),
        disk_bytes=sandbox.limit_bytes("ephemeral-storage"),
        kubernetes=kubernetes or None,
    )


def _sandbox(sandbox: SandboxTemplate) -> SandboxSpec:
    return SandboxSpec(
        image=sandbox.image,
        command=list(sandbox.command) if sandbox.command else None,
        resources=_resources(sandbox),
        network=sandbox.network,
        warm_pool_size=sandbox.warm_pool_size,
        ttl_seconds=sandbox.ttl_seconds,
    )


def program_class(name: str, spec: AgentProgramSpec, owner: OwnerRef | None = None) -> ProgramClassConfig:
    """The router's class for one AgentProgram; ClassError when the router would refuse it."""
    try:
        return ProgramClassConfig(
            name=name,
            model=spec.model,
            priority=spec.priority,
            max_concurrent_programs=spec.limits.max_concurrent_programs,
            max_context_tokens=spec.limits.max_context_tokens,
            lease_seconds=float(spec.limits.lease_seconds),
            sandbox=_sandbox(spec.sandbox) if spec.sandbox is not None else None,
            tools=[
                ToolSpec(
                    name=t.name,
                    description=t.description,
                    command=list(t.command),
                    timeout_s=t.timeout_seconds,
                    max_output_bytes=t.max_output_bytes,
                )
                for t in spec.tools or []
            ],
            owner=owner,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ClassError(f"program class {name}: {where or '(root)'}: {first['msg']}") from None


def owner_ref(body: dict[str, Any]) -> OwnerRef:
    """The AgentProgram as the owner of its sandboxes (pods are garbage-collected with it)."""
    meta = body["metadata"]
    return OwnerRef(
        api_version=body.get("apiVersion", "shoal.dev/v1alpha1"),
        kind=body.get("kind", "AgentProgram"),
        name=meta["name"],
        uid=meta.get("uid") or "",
        namespace=meta.get("namespace") or "default",
    )


def cluster_problem(spec: AgentProgramSpec) -> str | None:
    """Why a cluster cannot run this program's sandbox, or None.

    Local (command) sandboxes need a network namespace of their own, which the router's
    unprivileged pod cannot create; in a cluster each sandbox is a pod from ``image``.
    """
    if spec.sandbox is not None and spec.sandbox.command:
        return "sandbox.command runs local sandboxes (shoal up) only; in a cluster set sandbox.image"
    return None


def local_problem(spec: AgentProgramSpec) -> str | None:
    """Why ``shoal up`` cannot run this program's sandbox, or None."""
    sandbox = spec.sandbox
    if sandbox is None:
        return None
    if sandbox.image is not None:
        return "sandbox.image needs a cluster (pods); locally set sandbox.command"
    resources = sandbox.resources
    for section in ("requests", "limits"):
        unknown = sorted(set(getattr(resources, section) or {}) - set(LOCAL_RESOURCES)) if resources else []
        if unknown:
            allowed = ", ".join(LOCAL_RESOURCES)
            return f"sandbox.resources.{section}: {', '.join(unknown)} cannot be enforced locally (only {allowed})"
    return None


def classes_yaml(classes: Iterable[ProgramClassConfig]) -> str:
    """The classes file (``ProgramClassesFile``) the router loads, classes sorted by name."""
    document = ProgramClassesFile(classes=sorted(classes, key=lambda c: c.name))
    data = document.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
