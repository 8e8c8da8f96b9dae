"""Program-level least attained service (Autellix PLAS, with llm-d's LAS constants).

A program's attained service is prompt + 2 x completion tokens of its calls, decayed
with a 60 s half-life. While the pool is saturated (no engine has fewer than 5 waiting
requests and KV usage under 0.8, llm-d's saturation thresholds) calls wait at the router
and are dispatched best score first: 0.8 x (1 - normalized service) + 0.2 x normalized
head-of-line wait. There is no KV admission: when the pool has headroom, calls go
straight to the prefix+load pick.
"""

from __future__ import annotations

from bench.sim_programs.policy import Call, Policy, prefix_load_pick

HALF_LIFE_S = 60.0
QUEUE_THRESHOLD = 5
KV_THRESHOLD = 0.8
SERVICE_WEIGHT = 0.8
WAIT_WEIGHT = 0.2


class LeastAttainedService(Policy):
    name = "PLAS/LAS"
    tick_s = 0.25

    def __init__(self) -> None:
        self._service: dict[int, tuple[float, float]] = {}
        """program -> (service, when last updated)."""
        self._held: list[Call] = []

    def _attained(self, program: int, now: float) -> float:
        service, at = self._service.get(program, (0.0, now))
        return service * 0.5 ** ((now - at) / HALF_LIFE_S)

    def _has_headroom(self, engine: int) -> bool:
        e = self.engines[engine]
        return len(e.waiting) < QUEUE_THRESHOLD and e.kv_usage < KV_THRESHOLD

    def on_call(self, now: float, call: Call) -> None:
        self._held.append(call)
        self._drain(now)

    def on_call_done(self, now: float, call: Call) -> None:
        self._service[call.program] = (
            self._attained(call.program, now) + call.usage_prompt + 2 * call.usage_completion, now)
        self._drain(now)

    def on_release(self, now: float, program: int) -> None:
        self._service.pop(program, None)

    def on_tick(self, now: float) -> None:
        self._drain(now)

    def _drain(self, now: float) -> None:
        while self._held:
            open_engines = [i for i in range(len(self.engines)) if self._has_headroom(i)]
            if not open_engines:
                return
            services = [self._attained(c.program, now) for c in self._held]
            waits = [now - c.arrived_at for c in self._held]

            def norm(values: list[float], v: float) -> float:
                lo, hi = min(values), max(values)
                return 0.0 if hi == lo else (v - lo) / (hi - lo)

            best = max(range(len(self._held)), key=lambda i: (
                SERVICE_WEIGHT * (1 - norm(services, services[i])) + WAIT_WEIGHT * norm(waits, waits[i]), -i))
            call = self._held.pop(best)
            self.fleet.dispatch(call, prefix_load_pick(self, call, open_engines))
