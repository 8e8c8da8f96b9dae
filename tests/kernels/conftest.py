"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

``TRITON_INTERPRET`` must be set before anything imports triton, hence at import time here
(pytest imports this conftest before the test modules of this folder).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from shoal.engine.kernels import KernelBackend, get_backend

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(torch.iinfo(t.dtype).max)


def _poisoned_empty(*args: Any, **kwargs: Any) -> torch.Tensor:
    return _poison(_real_empty(*args, **kwargs))


def _poisoned_empty_like(*args: Any, **kwargs: Any) -> torch.Tensor:
    return _poison(_real_empty_like(*args, **kwargs))


@pytest.fixture
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``torch.empty``/``empty_like`` made during the test comes back NaN (floats) or max (ints),
    so an output element a kernel forgets to write fails the comparison instead of passing by luck."""
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    yield


@pytest.fixture(scope="session")
def ref() -> KernelBackend:
    return get_backend("torch")


@pytest.fixture(scope="session")
def tri() -> KernelBackend:
    return get_backend("triton")


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("SHOAL_TEST_SEED", torch.seed() % 2**31))
    print(f"SHOAL_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)
