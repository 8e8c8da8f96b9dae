"""The scheduler's records: programs, classes, engines, counters, and the reads over them.

``ProgramScheduler`` (scheduler.py) adds the events and the policy on top; everything here
is read by the API, the metrics and the benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

from shoal.router.programs.accounting import KvAccounts
from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig
from shoal.router.programs.counters import ProgramView, SchedulerCounters
from shoal.router.programs.growth import ContextSizes
from shoal.router.programs.retention import RetentionPolicy, ToolDurations
from shoal.router.programs.state import EngineCapacity, Program

DEFAULT_CLASS = "default"
_DEFAULT_CLASS_LIMIT = 100_000


class ProgramNotFound(LookupError):
    """No such program for this tenant (another tenant's program is not found either)."""


class UnknownClass(ValueError):
    """A request names a program class that is not loaded."""


class ClassForbidden(PermissionError):
    """A request names a program class that its tenant may not use."""


class ContextTooLong(ValueError):
    """A call's prompt exceeds its class's ``max_context_tokens``."""


class ProgramRegistry:
    """Every program's record, keyed by (tenant, program id), and what the scheduler knows
    about classes and engines."""

    _expiry_check_at: float
    """No lease runs out and no call is lost before this (activity only moves it later)."""

    def __init__(
        self,
        config: ProgramsConfig,
        classes: Sequence[ProgramClassConfig],
        clock: Callable[[], float],
        *,
        call_timeout_s: float = 600.0,
    ) -> None:
        """``call_timeout_s``: the router's total request timeout; a call in flight longer is
        dead (its client or the router crashed) and stops counting as activity."""
        self.config = config
        self.clock = clock
        self.call_timeout_s = call_timeout_s
        self.counters = SchedulerCounters()
        self.durations = ToolDurations()
        self.context_sizes = ContextSizes()
        self.retention = RetentionPolicy(
            config.retention_default_s, config.retention_max_s, config.retention_break_even_s
        )
        self._classes: dict[str, ProgramClassConfig] = {}
        self._programs: dict[tuple[str, str], Program] = {}
        self._call_owner: dict[str, tuple[str, str]] = {}
        self._engines: dict[str, EngineCapacity] = {}
        self._budget: dict[str, EngineCapacity] = {}
        """What the programs may use of each engine (``_engines`` less foreign load, if counted)."""
        self._foreign_blocks: dict[str, int] = {}
        """Each engine's foreign load in the previous report (blocks)."""
        self._kv = KvAccounts()
        self._expiry_check_at = 0.0
        self._aging_at: float | None = None
        """The first held call reaches the aging bound then (None: nothing held)."""
        self._seq = itertools.count()
        self._unpins: list[tuple[float, int, tuple[str, str]]] = []
        """(when, order, program): the engine's pin outlasts the scheduler's shortened one then."""
        self.set_classes(classes)

    # classes ---------------------------------------------------------------------------------------

    @property
    def classes(self) -> dict[str, ProgramClassConfig]:
        return dict(self._classes)

    def set_classes(self, classes: Iterable[ProgramClassConfig]) -> None:
        """Replace the loaded classes; running programs pick up their class's new config at
        their next call and keep the old one when their class is gone."""
        loaded: dict[str, ProgramClassConfig] = {}
        for cls in classes:
            if cls.name in loaded:
                raise ValueError(f"program class {cls.name!r} is defined twice")
            loaded[cls.name] = cls
        self._classes = loaded
        self._expiry_check_at = 0.0  # leases may have changed

    def resolve_class(self, name: str | None, model: str, tenant: str | None = None) -> ProgramClassConfig:
        """The named class, else the first class of ``model`` open to ``tenant``, else a
        default class (no limit on concurrent programs, default priority and lease).
        Raises UnknownClass, or ClassForbidden for a class closed to ``tenant``."""
        if name is not None:
            cls = self._classes.get(name)
            if cls is None:
                raise UnknownClass(f"program class {name!r} is not loaded")
            if tenant is not None and not cls.allows(tenant):
                raise ClassForbidden(f"program class {name!r} is not available to this API key")
            return cls
        for cls in self._classes.values():
            if cls.model == model and (tenant is None or cls.allows(tenant)):
                return cls
        return ProgramClassConfig(name=DEFAULT_CLASS, model=model, max_concurrent_programs=_DEFAULT_CLASS_LIMIT)

    # reads -----------------------------------------------------------------------------------------

    def find(self, program_id: str, tenant: str) -> Program | None:
        """The live record (read it, do not change it); None for other tenants' ids."""
        return self._programs.get((tenant, program_id))

    def view(self, program_id: str, tenant: str) -> ProgramView:
        program = self._programs.get((tenant, program_id))
        if program is None:
            raise ProgramNotFound(program_id)
        return ProgramView.of(program, self.clock())

    def views(self, tenant: str | None = None) -> list[ProgramView]:
        now = self.clock()
        return [ProgramView.of(p, now) for p in self._programs.values() if tenant is None or p.tenant == tenant]

    def program_counts(self) -> dict[tuple[str, str, str], int]:
        """(class, lifecycle, activity) -> programs."""
        counts: dict[tuple[str, str, str], int] = {}
        for p in self._programs.values():
            key = (p.cls.name, p.lifecycle.value, p.activity.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def working_sets(self) -> dict[str, int]:
        """Engine -> KV tokens the programs hold there now."""
        self._kv.expire(self._programs, self.clock())
        ledgers = self._kv.ledgers
        return {url: ledgers[url].working_set if url in ledgers else 0 for url in {*self._engines, *ledgers}}

    def audit_working_sets(self) -> dict[str, int]:
        """The working sets recomputed from the program records (must equal ``working_sets``)."""
        return self._kv.rebuilt(self._programs, self.clock())

    def engines(self) -> dict[str, EngineCapacity]:
        return dict(self._engines)

    def next_deadline(self) -> float | None:
        """The earliest time a decision may come without an event (aging, lease, pin expiry).

        Cheap (no pass over the programs); it may be early, never late."""
        self._kv.expire(self._programs, self.clock())
        unpin = self._unpins[0][0] if self._unpins else None
        times = [t for t in (self._expiry_check_at, self._aging_at, self._kv.next_pin_end(), unpin) if t is not None]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    def _expiry_due(self, now: float) -> bool:
        return now >= self._expiry_check_at

    def _expiry_checked(self, next_check: float) -> None:
        self._expiry_check_at = next_check

    def _check_expiry_by(self, when: float) -> None:
        """A lease may run out or a call be lost as early as ``when``."""
        self._expiry_check_at = min(self._expiry_check_at, when)

    def _owner(self, call_id: str) -> Program | None:
        key = self._call_owner.get(call_id)
        return self._programs.get(key) if key is not None else None
