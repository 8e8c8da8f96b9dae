"""Iteration-time model of one engine step, fitted on the real engine.

``t = t0 + kp * P + ka * A + kd * D`` where ``P`` is the prompt tokens computed in the
step, ``D`` the decodes, and ``A`` the attention work: for each prompt chunk
``chunk * (prefix + chunk / 2)`` plus, for each decode, its context length.
The fit runs a short prefill sweep and a decode sweep of ``shoal.engine.LLM`` on the
bundled model and is cached as JSON so reruns can reuse it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.engine.llm_engine import LLMEngine
    from shoal.engine.sequence import Sequence

MODEL = "bundled:smollm2-135m-instruct"


@dataclass(frozen=True)
class CostModel:
    """Seconds per engine step as a linear function of the step's work."""

    t0: float
    """Fixed cost of a step (scheduling, launch, sampling)."""
    kp: float
    """Seconds per prompt token computed."""
    ka: float
    """Seconds per unit of attention work (token x context token)."""
    kd: float
    """Seconds per decode sequence."""
    source: str = ""
    """Where the constants come from (model, machine, sweep size, fit residual)."""

    def step_time(self, prefill_tokens: int, attention_work: float, decodes: int) -> float:
        return self.t0 + self.kp * prefill_tokens + self.ka * attention_work + self.kd * decodes

    def describe(self) -> str:
        return (
            f"t = {self.t0 * 1e3:.2f} ms + {self.kp * 1e6:.1f} us x P + {self.ka * 1e9:.3f} ns x A"
            f" + {self.kd * 1e3:.3f} ms x D"
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> CostModel:
        data = json.loads(path.read_text())
        return CostModel(**data)


@dataclass(frozen=True)
class Sample:
    """One timed engine step and its work."""

    prefill_tokens: int
    attention_work: float
    decodes: int
    seconds: float


def _ids(rng: random.Random, n: int) -> list[int]:
    # ordinary vocabulary ids (the bundled model has 49152; skip the special tokens)
    return [rng.randrange(100, 40000) for _ in range(n)]


def sweep(model: str = MODEL, repeats: int = 2, seed: int = 0) -> list[Sample]:
    """Prefill sweep (chunk x cached prefix) and decode sweep (batch x context) of the real engine."""
    from shoal.engine import LLM
    from shoal.engine.sampling_params import SamplingParams

    llm = LLM(model, num_kv_blocks=1024, max_num_batched_tokens=1024, max_num_seqs=64, seed=seed)
    engine = llm.engine
    rng = random.Random(seed)
    samples: list[Sample] = []
    counter = iter(range(10**9))

    def one_step() -> float:
        start = time.perf_counter()
        engine.step()
        return time.perf_counter() - start

    def drain() -> None:
        while engine.has_unfinished_requests():
            engine.step()

    # warm up the kernels and allocator
    engine.add_request(f"w{next(counter)}", params=SamplingParams(max_tokens=4), prompt_token_ids=_ids(rng, 64))
    drain()
    one_token = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    for _ in range(repeats):
        for prefix in (0, 512):
            for chunk in (32, 128, 384):
                shared = _ids(rng, prefix)
                if prefix:
                    engine.add_request(f"p{next(counter)}", params=one_token, prompt_token_ids=shared + _ids(rng, 16))
                    drain()
                engine.add_request(f"c{next(counter)}", params=one_token, prompt_token_ids=shared + _ids(rng, chunk))
                seconds = one_step()
                drain()
                samples.append(Sample(chunk, chunk * (prefix + chunk / 2), 0, seconds))
    for batch in (1, 8, 32):
        for context in (64, 768):
            # one shared context (cached after the first sequence) keeps the set-up prefill short
            shared = _ids(rng, context - 16)
            params = SamplingParams(max_tokens=4 * repeats + 4, ignore_eos=True, temperature=0.0)
            for _ in range(batch):
                engine.add_request(f"d{next(counter)}", params=params, prompt_token_ids=shared + _ids(rng, 16))
            while any(s.num_computed_tokens < s.num_prompt_tokens for s in _running(engine)) or _waiting(engine):
                engine.step()
            for step in range(4 * repeats):
                seconds = one_step()
                samples.append(Sample(0, float(batch * (context + 2 + step)), batch, seconds))
            drain()
    return samples


def _running(engine: LLMEngine) -> list[Sequence]:
    return list(engine.scheduler.running)


def _waiting(engine: LLMEngine) -> bool:
    return bool(engine.scheduler.waiting)


def fit(samples: list[Sample], source: str) -> CostModel:
    """Non-negative least squares of the relative error (active set on 4 columns)."""
    import numpy as np

    x = np.array([[1.0, s.prefill_tokens, s.attention_work, s.decodes] for s in samples])
    y = np.array([s.seconds for s in samples])
    x, y_fit = x / y[:, None], np.ones_like(y)  # rows divided by their time: fit relative error
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    active = [0, 1, 2, 3]
    coef = np.zeros(4)
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] / scale[active], y_fit, rcond=None)
        if (sol >= 0).all():
            coef[:] = 0
            coef[active] = sol / scale[active]
            break
        active.pop(int(np.argmin(sol)))
    rel = float(np.median(np.abs(x @ coef - 1.0)))
    return CostModel(
        t0=float(coef[0]),
        kp=float(coef[1]),
        ka=float(coef[2]),
        kd=float(coef[3]),
        source=f"{source}; {len(samples)} timed steps, median relative error {rel:.1%}",
    )
