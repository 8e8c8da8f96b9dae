"""The program-scheduling policies compared by bench/programs.py, in report order."""

from __future__ import annotations

from collections.abc import Callable

from bench.sim_programs.policies.las import LeastAttainedService
from bench.sim_programs.policies.request_level import Continuum, PrefixLoad, RoundRobin, StickyFewestPrograms
from bench.sim_programs.policies.shoal import ShoalPolicy
from bench.sim_programs.policies.thunderagent import ThunderAgent
from bench.sim_programs.policy import Policy

POLICIES: dict[str, Callable[[], Policy]] = {
    "round-robin": RoundRobin,
    "sticky (TA default)": StickyFewestPrograms,
    "prefix+load": PrefixLoad,
    "TA as coded": lambda: ThunderAgent(intended=False),
    "TA as intended": lambda: ThunderAgent(intended=True),
    "PLAS/LAS": LeastAttainedService,
    "continuum": Continuum,
    "shoal": ShoalPolicy,
}
