"""The base of every router settings model (kept apart so sub-packages can build on it
without importing the whole ``router.yaml`` schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class StrictModel(BaseModel):
    """Base: unknown keys rejected, camelCase aliases, snake_case accepted, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
        use_attribute_docstrings=True,
    )
