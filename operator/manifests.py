"""Reading ModelPool / Router / AgentProgram / Secret manifests from files and folders (for ``shoal up``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.crds import AgentProgramSpec, ModelPoolSpec, Reason, RouterSpec, parse_model_uri
from shoal.operator.builders.program_class import ClassError, local_problem, program_class
from shoal.operator.builders.router_config import served_models
from shoal.operator.context import SpecRejected, validate_spec

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    """A manifest cannot run locally; the message is one line naming the file and the object."""


@dataclass(frozen=True)
class LocalStack:
    """The objects ``shoal up`` runs (namespaces are ignored: one machine is one namespace)."""

    pools: dict[str, ModelPoolSpec] = field(default_factory=dict)
    routers: dict[str, RouterSpec] = field(default_factory=dict)
    programs: dict[str, AgentProgramSpec] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)


def manifest_files(paths: list[Path]) -> list[Path]:
    """The YAML/JSON files named, folders expanded (sorted, not recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    if not files:
        raise ManifestError(f"no manifests (*.yaml, *.yml, *.json) in {', '.join(map(str, paths))}")
    return files


def _secret_data(doc: dict[str, Any], where: str) -> dict[str, str]:
    data = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    for key, value in (doc.get("data") or {}).items():
        try:
            data.setdefault(key, base64.b64decode(value).decode())
        except ValueError:
            raise ManifestError(f"{where}: data.{key} is not base64") from None
    return data


def _check_local_source(spec: ModelPoolSpec) -> None:
    src = parse_model_uri(spec.model.uri)
    if src.scheme in ("pvc", "https", "http"):
        raise SpecRejected(
            Reason.MODEL_SOURCE_INVALID,
            f"{src.scheme}:// models need a cluster; locally use bundled:<name> or file:///<path>",
        )
    if src.scheme in ("file", "hostpath") and not Path(src.location).exists():
        raise SpecRejected(Reason.MODEL_SOURCE_INVALID, f"model path {src.location} does not exist on this machine")


def _local_program(name: str, spec: AgentProgramSpec) -> AgentProgramSpec:
    problem = local_problem(spec)
    if problem is not None:
        raise SpecRejected(Reason.FEATURE_NOT_SUPPORTED, problem)
    try:
        program_class(name, spec)
    except ClassError as exc:
        raise SpecRejected(Reason.SPEC_INVALID, str(exc)) from None
    return spec


def load_stack(paths: list[Path]) -> LocalStack:
    """Parse and validate every object; ManifestError on the first problem."""
    stack = LocalStack()
    seen: dict[tuple[str, str], str] = {}
    for file in manifest_files(paths):
        try:
            docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            raise ManifestError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
        for doc in docs:
            if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict) or "name" not in doc["metadata"]:
                raise ManifestError(f"{file}: every document needs kind and metadata.name")
            kind, name = str(doc.get("kind")), str(doc["metadata"]["name"])
            where = f"{file}: {kind}/{name}"
            if (kind, name) in seen:
                raise ManifestError(f"{where}: defined twice (also in {seen[(kind, name)]})")
            seen[(kind, name)] = str(file)
            try:
                if kind == "ModelPool":
                    pool = validate_spec(ModelPoolSpec, doc)
                    _check_local_source(pool)
                    stack.pools[name] = pool
                elif kind == "Router":
                    stack.routers[name] = validate_spec(RouterSpec, doc)
                elif kind == "AgentProgram":
                    stack.programs[name] = _local_program(name, validate_spec(AgentProgramSpec, doc))
                elif kind == "Secret":
                    stack.secrets[name] = _secret_data(doc, where)
                else:
                    raise ManifestError(f"{where}: shoal up runs ModelPool, Router, AgentProgram and Secret, not {kind}")
            except SpecRejected as exc:
                raise ManifestError(f"{where}: {exc.reason.value}: {exc.message}") from None
    _check_references(stack)
    return stack


def _check_references(stack: LocalStack) -> None:
    if not stack.pools:
        raise ManifestError("no ModelPool in the manifests: nothing to serve")
    for name, router in stack.routers.items():
        missing = [p.name for p in router.pools if p.name not in stack.pools]
        if missing:
            raise ManifestError(f"Router/{name}: {Reason.POOL_NOT_FOUND.value}: no ModelPool {', '.join(missing)}")
        if router.auth is not None and router.auth.api_keys_secret.name not in stack.secrets:
            secret = router.auth.api_keys_secret.name
            raise ManifestError(f"Router/{name}: {Reason.SECRET_NOT_FOUND.value}: no Secret {secret} in the manifests")
    for name, pool in stack.pools.items():
        ref = pool.engine.auth.api_key_secret_ref if pool.engine.auth else None
        if ref is not None and ref.key not in stack.secrets.get(ref.name, {}):
            raise ManifestError(
                f"ModelPool/{name}: {Reason.SECRET_NOT_FOUND.value}: no Secret {ref.name} with key {ref.key}"
            )
    for name, program in stack.programs.items():
        if program.router not in stack.routers:
            raise ManifestError(f"AgentProgram/{name}: {Reason.ROUTER_NOT_FOUND.value}: no Router {program.router}")
        router = stack.routers[program.router]
        served = served_models(router, {ref.name: stack.pools.get(ref.name) for ref in router.pools})
        if program.model not in served:
            raise ManifestError(
                f"AgentProgram/{name}: {Reason.MODEL_NOT_SERVED.value}: Router {program.router} serves no model "
                f"{program.model} (serves: {', '.join(sorted(served))})"
            )
