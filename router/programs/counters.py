"""Metrics-ready counters of the scheduler and read-only views of its programs.

The scheduler only counts; ``metrics.py`` turns these into Prometheus series, the HTTP API
into JSON, and the benchmark into its figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from shoal.router.programs.state import Program

STEP_WINDOW_S = 60.0


@dataclass
class SchedulerCounters:
    """Monotonic totals (by class) plus observations waiting to be drained."""

    pauses: Counter[str] = field(default_factory=Counter)
    resumes: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    """Finished LLM calls (one call + the tool run after it is a step)."""
    lease_expiries: Counter[str] = field(default_factory=Counter)
    terminations: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(class, reason) -> programs ended."""
    forced_admissions: Counter[str] = field(default_factory=Counter)
    """Calls admitted by the aging bound."""
    longest_wait_s: float = 0.0
    pause_seconds: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=10_000))
    """(class, seconds paused) per resume, until drained."""
    _step_times: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def step(self, class_name: str, now: float) -> None:
        self.steps[class_name] += 1
        times = self._step_times[class_name]
        times.append(now)
        while times and times[0] < now - STEP_WINDOW_S:
            times.popleft()

    def steps_per_minute(self, class_name: str, now: float) -> float:
        """Steps of the class over the last minute."""
        times = self._step_times.get(class_name)
        if not times:
            return 0.0
        return float(sum(1 for t in times if t >= now - STEP_WINDOW_S)) * 60.0 / STEP_WINDOW_S

    def drain_pause_seconds(self) -> list[tuple[str, float]]:
        out = list(self.pause_seconds)
        self.pause_seconds.clear()
        return out


@dataclass(frozen=True)
class ProgramView:
    """A program as the API shows it to its tenant."""

    program_id: str
    tenant: str
    class_name: str
    lifecycle: str
    activity: str
    engine: str | None
    turns: int
    context_tokens: int
    calls_in_flight: int
    waiting_calls: int
    marked_for_pause: bool
    pinned_for_s: float
    idle_s: float
    paused_for_s: float | None
    queued_for_s: float | None
    """Since its first call arrived, while it was never admitted yet."""
    prompt_tokens_total: int
    cached_tokens_total: int

    @staticmethod
    def of(program: Program, now: float) -> ProgramView:
        return ProgramView(
            program_id=program.program_id,
            tenant=program.tenant,
            class_name=program.cls.name,
            lifecycle=program.lifecycle.value,
            activity=program.activity.value,
            engine=program.engine,
            turns=program.turns,
            context_tokens=program.context_tokens,
            calls_in_flight=len(program.calls),
            waiting_calls=len(program.waiting),
            marked_for_pause=program.marked,
            pinned_for_s=max(0.0, program.pinned_until - now) if not program.calls else 0.0,
            idle_s=max(0.0, now - program.last_activity),
            paused_for_s=None if program.paused_at is None else now - program.paused_at,
            queued_for_s=None if program.queued_at is None else now - program.queued_at,
            prompt_tokens_total=program.prompt_tokens_total,
            cached_tokens_total=program.cached_tokens_total,
        )
