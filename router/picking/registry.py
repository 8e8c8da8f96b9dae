"""Builds picking plugins from config by their registered ``type`` name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from shoal.router.picking.filters import HealthyFilter, NotSaturatedFilter, ServesModelFilter
from shoal.router.picking.params import Params
from shoal.router.picking.pickers import MaxScorePicker, RandomPicker, RoundRobinPicker
from shoal.router.picking.plugin import Filter, Picker, Plugin, Scorer
from shoal.router.picking.prefix_index import ApproximatePrefixIndex, PrecisePrefixIndex, PrefixIndex
from shoal.router.picking.runner import PickObserver, PickRunner, WeightedScorer
from shoal.router.picking.scorers_affinity import PrefixAffinityScorer, SessionAffinityScorer
from shoal.router.picking.scorers_load import KvUsageScorer, LeastRequestsScorer, QueueDepthScorer

if TYPE_CHECKING:
    from shoal.router.config import PickingConfig, PluginSpec, PrefixConfig

Kind = Literal["filter", "scorer", "picker"]


@dataclass(frozen=True)
class PluginContext:
    """Shared per-pool resources a plugin may need when built."""

    pool: str
    prefix_index: PrefixIndex


@dataclass(frozen=True)
class _Entry:
    kind: Kind
    params: type[Params]
    factory: Callable[[Any, PluginContext], Plugin]


_REGISTRY: dict[tuple[Kind, str], _Entry] = {}


def register(
    kind: Kind,
    cls: type[Plugin],
    params: type[Params],
    factory: Callable[[Any, PluginContext], Plugin] | None = None,
) -> None:
    """Add a plugin type. ``factory(params, ctx)`` defaults to ``cls(params)``."""
    key = (kind, cls.type_name)
    if key in _REGISTRY:
        raise ValueError(f"{kind} {cls.type_name!r} is already registered")
    _REGISTRY[key] = _Entry(kind, params, factory or (lambda p, ctx: cls(p)))  # type: ignore[call-arg]


def registered(kind: Kind) -> list[str]:
    """Names of the registered plugins of ``kind``."""
    return sorted(name for k, name in _REGISTRY if k == kind)


def _entry(kind: Kind, type_name: str) -> _Entry:
    entry = _REGISTRY.get((kind, type_name))
    if entry is None:
        raise ValueError(f"unknown {kind} {type_name!r}; known: {', '.join(registered(kind))}")
    return entry


def validate_spec(kind: Kind, spec: PluginSpec) -> None:
    """Raise ValueError when ``spec`` names an unknown plugin or has bad params."""
    entry = _entry(kind, spec.type)
    try:
        entry.params.model_validate(spec.params)
    except ValidationError as exc:
        raise ValueError(f"{kind} {spec.type!r}: invalid params: {exc}") from exc


def build(kind: Kind, spec: PluginSpec, ctx: PluginContext) -> Plugin:
    """Instantiate the plugin ``spec`` describes."""
    entry = _entry(kind, spec.type)
    return entry.factory(entry.params.model_validate(spec.params), ctx)


def build_filter(spec: PluginSpec, ctx: PluginContext) -> Filter:
    plugin = build("filter", spec, ctx)
    assert isinstance(plugin, Filter)
    return plugin


def build_scorer(spec: PluginSpec, ctx: PluginContext) -> Scorer:
    plugin = build("scorer", spec, ctx)
    assert isinstance(plugin, Scorer)
    return plugin


def build_picker(spec: PluginSpec, ctx: PluginContext) -> Picker:
    plugin = build("picker", spec, ctx)
    assert isinstance(plugin, Picker)
    return plugin


def make_prefix_index(cfg: PrefixConfig) -> ApproximatePrefixIndex | PrecisePrefixIndex:
    """The prefix index ``cfg.mode`` asks for."""
    if cfg.mode == "precise":
        return PrecisePrefixIndex()
    return ApproximatePrefixIndex(cfg.lru_blocks_per_endpoint)


def build_runner(cfg: PickingConfig, ctx: PluginContext, observer: PickObserver | None = None) -> PickRunner:
    """A pool's PickRunner from its picking config."""
    filters = [build_filter(spec, ctx) for spec in cfg.filters]
    scorers = [WeightedScorer(build_scorer(spec, ctx), spec.weight) for spec in cfg.scorers]
    return PickRunner(ctx.pool, filters, scorers, build_picker(cfg.picker, ctx), observer)


register("filter", HealthyFilter, HealthyFilter.Params)
register("filter", ServesModelFilter, ServesModelFilter.Params)
register("filter", NotSaturatedFilter, NotSaturatedFilter.Params)
register(
    "scorer",
    PrefixAffinityScorer,
    PrefixAffinityScorer.Params,
    lambda p, ctx: PrefixAffinityScorer(p, ctx.prefix_index),
)
register("scorer", QueueDepthScorer, QueueDepthScorer.Params)
register("scorer", KvUsageScorer, KvUsageScorer.Params)
register("scorer", LeastRequestsScorer, LeastRequestsScorer.Params)
register("scorer", SessionAffinityScorer, SessionAffinityScorer.Params)
register("picker", MaxScorePicker, MaxScorePicker.Params)
register("picker", RoundRobinPicker, RoundRobinPicker.Params)
register("picker", RandomPicker, RandomPicker.Params)
