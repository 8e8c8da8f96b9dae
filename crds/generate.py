"""CRD manifests generated from the pydantic models (the single source of truth).

``python -m shoal.crds.generate`` rewrites ``crds/generated/`` and ``helm/shoal/crds/``;
``--check`` exits 1 when the committed files differ from the generated ones.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from shoal.crds.agentprogram import AgentProgramSpec, AgentProgramStatus
from shoal.crds.common import GROUP, VERSION
from shoal.crds.modelpool import ModelPoolSpec, ModelPoolStatus
from shoal.crds.router import RouterSpec, RouterStatus
from shoal.crds.schema import openapi_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIRS = (REPO_ROOT / "crds" / "generated", REPO_ROOT / "helm" / "shoal" / "crds")


@dataclass(frozen=True)
class Column:
    """A kubectl printer column."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and how it is served."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[Column, ...]
    scale: bool = False
    categories: tuple[str, ...] = field(default=("shoal",))

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready(kind: str) -> tuple[Column, Column]:
    return (
        Column("Status", "string", '.status.conditions[?(@.type=="Ready")].reason', f"Why the {kind} is (not) Ready"),
        Column("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
    )


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="ModelPool",
        plural="modelpools",
        short_names=("mp",),
        description="A pool of engine replicas serving one model, with autoscaling on queue depth.",
        spec=ModelPoolSpec,
        status=ModelPoolStatus,
        columns=(
            Column("Model", "string", ".spec.model.servedModelName", "Served model name"),
            Column("Replicas", "integer", ".spec.replicas", "Desired replicas"),
            Column("Ready", "integer", ".status.readyReplicas", "Replicas passing readiness"),
            *_ready("pool"),
        ),
        scale=True,
    ),
    Kind(
        kind="Router",
        plural="routers",
        short_names=("srt",),
        description="An OpenAI-compatible router over ModelPools.",
        spec=RouterSpec,
        status=RouterStatus,
        columns=(
            Column("Replicas", "integer", ".spec.replicas", "Desired replicas"),
            Column("Ready", "integer", ".status.readyReplicas", "Replicas passing readiness"),
            Column("Endpoint", "string", ".status.endpoint", "OpenAI API base URL"),
            *_ready("router"),
        ),
    ),
    Kind(
        kind="AgentProgram",
        plural="agentprograms",
        short_names=("ap",),
        description="A class of agent workflows the router schedules as whole programs.",
        spec=AgentProgramSpec,
        status=AgentProgramStatus,
        columns=(
            Column("Router", "string", ".spec.router", "Router scheduling the programs"),
            Column("Model", "string", ".spec.model", "Served model name"),
            Column("Priority", "integer", ".spec.priority", "Admission priority"),
            Column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Loaded by the router"),
            Column("Active", "integer", ".status.activePrograms", "Programs admitted and running"),
            Column("Queued", "integer", ".status.queuedPrograms", "Programs waiting for admission"),
            *_ready("program"),
        ),
    ),
)


def _status_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = openapi_schema(model)
    conditions = schema["properties"].get("conditions")
    if conditions is not None:
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "shoal"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": kind.description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(kind.spec),
                                "status": _status_schema(kind.status),
                            },
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        {
                            "name": c.name,
                            "type": c.type,
                            "jsonPath": c.json_path,
                            "description": c.description,
                            **({"priority": c.priority} if c.priority else {}),
                        }
                        for c in kind.columns
                    ],
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    """The YAML text committed for one kind."""
    header = "# Generated by `python -m shoal.crds.generate` from shoal.crds; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)


def file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


def drift(output_dirs: tuple[Path, ...] = OUTPUT_DIRS) -> list[Path]:
    """Committed files that differ from (or are missing against) the generated text."""
    stale = []
    for out in output_dirs:
        for kind in KINDS:
            path = out / file_name(kind)
            if not path.exists() or path.read_text() != render(kind):
                stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.crds.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the committed YAML is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        for path in stale:
            print(f"stale: {path} (run python -m shoal.crds.generate)", file=sys.stderr)
        return 1 if stale else 0
    for out in OUTPUT_DIRS:
        out.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (out / file_name(kind)).write_text(render(kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
