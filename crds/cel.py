"""CEL admission rules (``x-kubernetes-validations``) declared beside the pydantic validators.

A model lists its cross-field rules in a ``CEL_RULES`` class attribute; the CRD generator writes
them onto that model's node of the schema, so ``kubectl apply`` refuses what the operator would
refuse. Each rule names the condition reason of its pydantic counterpart, and the tests evaluate
every rule on valid and invalid specs and check both sides agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

RULES_ATTRIBUTE = "CEL_RULES"
"""The class attribute (a tuple of CelRule) holding a model's own rules (not inherited)."""


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry; ``self`` is the object of the declaring model."""

    rule: str
    """The CEL expression; true means valid."""
    message: str
    """What the API server answers when the rule fails."""
    reason: str
    """The condition reason the pydantic validator gives for the same problem."""
    field_path: str | None = None
    """JSONPath (from ``self``) of the field the error is reported on, e.g. ``.minReplicas``."""

    def schema(self) -> dict[str, str]:
        """The entry as written into the CRD."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def rules_of(cls: type) -> tuple[CelRule, ...]:
    """The rules a class declares itself (a subclass does not repeat its base's).

    The router's settings models cannot import this package (it sits above them): they declare
    plain mappings with the same keys (rule, message, reason, fieldPath).
    """
    declared: tuple[CelRule | Mapping[str, str], ...] = cls.__dict__.get(RULES_ATTRIBUTE, ())
    return tuple(
        r if isinstance(r, CelRule) else CelRule(r["rule"], r["message"], r["reason"], r.get("fieldPath"))
        for r in declared
    )


def has_path(path: str) -> str:
    """A CEL test that every step of ``self.a.b.c`` is present (has() tests one field at a time)."""
    steps = path.split(".")
    return " && ".join(f"has({'.'.join(steps[: i + 1])})" for i in range(1, len(steps)))


def has_key(path: str, key: str) -> str:
    """A CEL test that the map at ``path`` exists and holds ``key``."""
    return f"{has_path(path)} && '{key}' in {path}"


class CrdJsonSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema plus each model's CEL rules."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        rules = rules_of(schema["cls"])
        if rules:
            json_schema["x-kubernetes-validations"] = [r.schema() for r in rules]
        return json_schema
