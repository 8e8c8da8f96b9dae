"""Endpoint-picking settings: filter, scorer and picker plugins, and prefix-affinity bookkeeping."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shoal.router.config_base import StrictModel as _Strict


class PluginSpec(_Strict):
    """One endpoint-picking plugin: a registered ``type`` plus its parameters."""

    type: str = Field(min_length=1)
    """Registered plugin name (see ``shoal.router.picking.registry``)."""
    weight: float = Field(default=1.0, ge=0.0)
    """Scorers only: multiplier of this scorer's [0, 1] score in the weighted sum."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Plugin-specific parameters, validated by the plugin when the router builds it."""


def _plugins(items: list[str | dict[str, Any] | PluginSpec]) -> list[PluginSpec | dict[str, Any]]:
    # A bare string is shorthand for {type: NAME}.
    return [{"type": item} if isinstance(item, str) else item for item in items]


class PrefixConfig(_Strict):
    """Prefix-affinity bookkeeping shared by the ``prefix-affinity`` scorer."""

    mode: Literal["approximate", "precise"] = "approximate"
    """``approximate``: remember, per endpoint, the block hashes of prompts sent there (LRU).
    ``precise``: poll each engine's ``GET /shoal/kv/digest`` and index what it really holds
    (plus what was sent since the last poll)."""
    lru_blocks_per_endpoint: int = Field(default=200_000, ge=1)
    """Approximate mode: most block hashes remembered per endpoint (about 8 bytes + overhead each)."""
    digest_interval_s: float = Field(default=1.0, gt=0)
    """Precise mode: how often each engine's KV digest is polled."""
    block_size: int | None = Field(default=None, ge=1)
    """Tokens per block; None takes the engine's (from ``/shoal/tokenizer``), else 16."""


class PickingConfig(_Strict):
    """Endpoint picking: filters narrow the candidates, weighted scorers rank them, a picker chooses."""

    filters: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(type=t) for t in ("healthy", "serves-model", "not-saturated")]
    )
    """Applied in order. Default: healthy, serves-model, not-saturated."""
    scorers: list[PluginSpec] = Field(
        default_factory=lambda: [
            PluginSpec(type="prefix-affinity", weight=3.0),
            PluginSpec(type="queue-depth", weight=1.0),
            PluginSpec(type="kv-usage", weight=1.0),
            PluginSpec(type="session-affinity", weight=1.0),
        ]
    )
    """Each returns a score in [0, 1] per endpoint (the runner clamps), multiplied by ``weight``."""
    picker: PluginSpec = Field(default_factory=lambda: PluginSpec(type="max-score"))
    """Chooses from the scored candidates; ``max-score`` breaks ties by consistent hashing."""
    prefix: PrefixConfig = Field(default_factory=lambda: PrefixConfig())
    """Prefix-affinity mode and sizes."""

    @field_validator("filters", "scorers", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _plugins(value) if isinstance(value, list) else value

    @field_validator("picker", mode="before")
    @classmethod
    def _picker(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known(self) -> PickingConfig:
        # Imported here: the registry imports the plugins, which import this module's types.
        from shoal.router.picking.registry import validate_spec

        for spec in self.filters:
            validate_spec("filter", spec)
        for spec in self.scorers:
            validate_spec("scorer", spec)
        validate_spec("picker", self.picker)
        return self
