"""Settings sized from the machine: step budget from the cores, CPU KV pool from available RAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.engine import machine_defaults as md
from shoal.engine.config import EngineConfig


@pytest.mark.parametrize(("cores", "budget"), [(1, 1024), (2, 2048), (4, 4096), (64, 8192)])
def test_step_budget_grows_with_cores(cores: int, budget: int) -> None:
    assert md.default_step_budget(cores) == budget


def test_engine_config_defaults_come_from_the_machine() -> None:
    config = EngineConfig(model="x")
    assert config.max_num_batched_tokens == md.default_step_budget()
    assert config.kv_cache_memory_gb is None


def test_available_ram_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   8000000 kB\n")
    no_cgroup = tmp_path / "no-cgroup"
    assert md.available_ram_bytes(meminfo, no_cgroup) == 8000000 * 1024
    assert md.available_ram_bytes(tmp_path / "missing", no_cgroup) is None


def test_a_container_memory_limit_bounds_available_ram(tmp_path: Path) -> None:
    # A pod's /proc/meminfo shows its node: the cgroup limit is what the engine may really use.
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:   64000000 kB\n")
    (tmp_path / "memory.max").write_text(f"{4 << 30}\n")
    (tmp_path / "memory.current").write_text(f"{1 << 30}\n")
    assert md.available_ram_bytes(meminfo, tmp_path) == 3 << 30
    (tmp_path / "memory.max").write_text("max\n")
    assert md.available_ram_bytes(meminfo, tmp_path) == 64000000 * 1024


def test_a_container_cpu_quota_bounds_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 cores' worth of budget
    assert md.usable_cores(tmp_path) == min(2, md.usable_cores(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert md.usable_cores(tmp_path) == md.usable_cores(tmp_path / "none")


@pytest.mark.parametrize(
    ("available", "expected"),
    [(8 << 30, int((8 << 30) * md.CPU_KV_FRACTION)), (256 << 30, md.CPU_KV_CAP_BYTES), (100 << 20, md.CPU_KV_FLOOR_BYTES)],
)
def test_cpu_kv_pool_is_a_capped_fraction_of_available_ram(
    available: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(md, "available_ram_bytes", lambda: available)
    assert md.default_kv_cache_bytes("cpu") == expected
