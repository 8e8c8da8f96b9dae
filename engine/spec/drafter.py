"""The drafter interface and its registry: a drafter proposes a token tree for a sequence."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from shoal.engine.sequence import Sequence
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.token_tree import DraftTree


class Drafter(ABC):
    """Proposes continuations cheaply; the model verifies them, so a bad draft costs only time."""

    @abstractmethod
    def propose(self, seq: Sequence, budget: int, max_depth: int) -> DraftTree | None:
        """A draft of at most ``budget`` nodes and ``max_depth`` levels to follow ``seq``'s tokens, or None."""

    def release(self, seq: Sequence) -> None:  # noqa: B027 - optional hook
        """``seq`` is finished: learn from the rest of it and drop its state."""


DrafterFactory = Callable[[SpeculationConfig], Drafter]
_REGISTRY: dict[str, DrafterFactory] = {}


def register_drafter(name: str, factory: DrafterFactory) -> None:
    _REGISTRY[name] = factory


def create_drafter(config: SpeculationConfig) -> Drafter:
    if config.method not in _REGISTRY:
        raise ValueError(
            f"unknown speculation method {config.method!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[config.method](config)
