"""Base of the plugins' parameter models (the ``params`` of a ``PluginSpec``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Params(BaseModel):
    """Strict, camelCase keys (snake_case accepted), like the rest of the router config."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=True, frozen=True)


class NoParams(Params):
    """For plugins without parameters."""
