"""The Router CRD's spec is the router's own settings schema: a router setting missing from the
committed CRD YAML (a field added to shoal.router.config without regenerating) fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from shoal.crds.router import OPERATOR_SET_PROGRAMS
from shoal.crds.schema import openapi_schema
from shoal.router.config import AuthSettings, PeerSettings, PoolSettings, RouterSettings, TimeoutsConfig
from shoal.router.programs.config import ProgramsConfig

REPO = Path(__file__).resolve().parents[2]
COMMITTED = (REPO / "crds" / "generated" / "shoal.dev_routers.yaml", REPO / "helm" / "shoal" / "crds" / "shoal.dev_routers.yaml")
K8S_OVERRIDES = {"auth", "programs", "peers"}
"""Router settings the CRD extends (auth: a Secret reference) or trims (programs: what the operator sets)."""


def committed_spec(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def stale_settings(spec: dict[str, Any], settings: type[RouterSettings] = RouterSettings) -> list[str]:
    """Router settings whose schema in ``spec`` (a committed CRD's) is missing or differs from the router's."""
    # (where, router model, its place in the CRD, settings checked by presence only, settings left out)
    pairs: list[tuple[str, type[BaseModel], dict[str, Any], set[str], set[str]]] = [
        ("", settings, spec, K8S_OVERRIDES, set()),
        ("pools[].", PoolSettings, spec["properties"]["pools"]["items"], set(), set()),
        ("auth.", AuthSettings, spec["properties"].get("auth", {}), set(), set()),
        ("peers.", PeerSettings, spec["properties"].get("peers", {}), set(), set()),
        ("programs.", ProgramsConfig, spec["properties"].get("programs", {}), set(),
         {_camel(n) for n in OPERATOR_SET_PROGRAMS}),
    ]  # fmt: skip
    stale = []
    for prefix, model, have, presence_only, left_out in pairs:
        for name, schema in openapi_schema(model)["properties"].items():
            theirs = have.get("properties", {}).get(name)
            if name not in left_out and (theirs is None or (name not in presence_only and theirs != schema)):
                stale.append(prefix + name)
    return sorted(stale)


def test_committed_router_crds_hold_every_router_setting_as_the_router_defines_it() -> None:
    for path in COMMITTED:
        assert stale_settings(committed_spec(path)) == [], f"run: python -m shoal.crds.generate ({path})"


def test_a_router_setting_added_without_regenerating_is_caught() -> None:
    class NewSetting(RouterSettings):
        warmup_s: float = 1.0
        """A setting someone adds to the router."""

    class LongerTimeouts(TimeoutsConfig):
        drain_s: float = 5.0
        """A nested setting someone adds."""

    class NewNestedSetting(RouterSettings):
        timeouts: LongerTimeouts = Field(default_factory=lambda: LongerTimeouts())
        """Upstream and client timeouts."""

    spec = committed_spec(COMMITTED[0])
    assert stale_settings(spec, NewSetting) == ["warmupS"]
    assert stale_settings(spec, NewNestedSetting) == ["timeouts"]


def test_kubernetes_fields_sit_beside_the_router_settings() -> None:
    spec = committed_spec(COMMITTED[0])
    kubernetes_only = set(spec["properties"]) - set(openapi_schema(RouterSettings)["properties"])
    assert kubernetes_only == {"pools", "replicas", "image", "resources", "service"}
    assert set(spec["properties"]["auth"]["properties"]) - set(openapi_schema(AuthSettings)["properties"]) == {
        "apiKeysSecret"
    }
    assert not {"classes", "classesFile", "forwardedSecretEnv"} & set(spec["properties"]["programs"]["properties"])
