"""Request -> pool: exact model names, aliases, weighted splits and prompt rules."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from shoal.router.config import RouteConfig, RouterConfig
from shoal.router.errors import model_not_found
from shoal.router.picking.hashing import hrw_weight


@dataclass(frozen=True)
class Resolved:
    pool: str
    forward_model: str
    """The model name sent to the engine (a served name of the pool)."""


@dataclass(frozen=True)
class _Rule:
    keywords: tuple[str, ...]
    regex: re.Pattern[str] | None
    pool: str

    def matches(self, text: str) -> bool:
        if self.keywords:
            lowered = text.lower()
            if any(k in lowered for k in self.keywords):
                return True
        return self.regex is not None and self.regex.search(text) is not None


@dataclass(frozen=True)
class _Route:
    pool: str | None
    split: tuple[tuple[str, float], ...]
    rules: tuple[_Rule, ...]

    @classmethod
    def from_config(cls, cfg: RouteConfig) -> _Route:
        rules = tuple(
            _Rule(tuple(k.lower() for k in r.keywords), re.compile(r.regex) if r.regex else None, r.pool)
            for r in cfg.rules
        )
        split = tuple((s.pool, s.weight) for s in cfg.split or ())
        return cls(cfg.pool, split, rules)


class RouteTable:
    """Resolves a requested model name to a pool and the name to forward."""

    def __init__(self, cfg: RouterConfig, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._served: dict[str, tuple[str, ...]] = {p.name: tuple(p.models) for p in cfg.pools}
        self._direct: dict[str, str] = {}
        for pool in cfg.pools:
            for name in [*pool.models, *pool.aliases]:
                self._direct[name] = pool.name
        self._routes: dict[str, _Route] = {}
        for route in cfg.routes:
            compiled = _Route.from_config(route)
            for name in [route.model, *route.aliases]:
                self._routes[name] = compiled
                self._direct.pop(name, None)

    def model_names(self) -> dict[str, str]:
        """Every name a client may send -> the pool it goes to ('' for multi-pool routes)."""
        names = dict(self._direct)
        for name, route in self._routes.items():
            names[name] = route.pool or ""
        return names

    def resolve(self, model: str, prompt_text: Callable[[], str], sticky_key: str | None = None) -> Resolved:
        """Raises RouterError 404 for unknown names."""
        pool = self._direct.get(model)
        if pool is None:
            route = self._routes.get(model)
            if route is None:
                raise model_not_found(model)
            pool = self._route(route, prompt_text, sticky_key)
        served = self._served[pool]
        return Resolved(pool, model if model in served else served[0])

    def _route(self, route: _Route, prompt_text: Callable[[], str], sticky_key: str | None) -> str:
        if route.rules:
            text = prompt_text()
            for rule in route.rules:
                if rule.matches(text):
                    return rule.pool
        if route.pool is not None:
            return route.pool
        total = sum(w for _, w in route.split)
        if sticky_key:
            # A program/session keeps its pool: a deterministic point in [0, total).
            point = hrw_weight(sticky_key, "split") / 2**64 * total
        else:
            point = self._rng.random() * total
        for pool, weight in route.split:
            point -= weight
            if point < 0:
                return pool
        return route.split[-1][0]
