"""Engine settings sized from the machine when the user gives none.

- KV pool: on CPU a fraction of the available RAM (``MemAvailable``) with a cap, so that several
  engines (and the OS) still fit; on CUDA a fraction of the GPU memory free after the model is
  loaded (like vLLM's ``gpu_memory_utilization``, but of what is free).
- Step token budget: grows with the cores (one step's prefill chunk stays ~1 s on CPU).
- Threads: torch's default, one per core.

Inside a container the machine is the container: the cgroup's memory limit and CPU quota bound
what /proc/meminfo and the core count say (a pod sees its node's figures there).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CPU_KV_FRACTION = 0.1
"""Share of the available RAM a CPU engine's KV pool takes by default."""
CPU_KV_CAP_BYTES = 2 << 30
"""Cap on the default CPU KV pool."""
CPU_KV_FLOOR_BYTES = 64 << 20
GPU_KV_FRACTION = 0.85
"""Share of the GPU memory free after the model is loaded that the KV pool takes by default."""
TOKENS_PER_CORE = 1024
MAX_DEFAULT_BUDGET = 8192


CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def usable_cores(cgroup: Path = CGROUP) -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 ``cpu.max`` quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = (_read(cgroup / "cpu.max") or "max").split()
    if len(quota) == 2 and quota[0] != "max":
        with contextlib.suppress(ValueError):
            cores = min(cores, max(1, -(-int(quota[0]) // int(quota[1]))))
    return max(1, cores)


def default_step_budget(cores: int | None = None) -> int:
    """``max_num_batched_tokens`` default: 1024 per usable core, between 1024 and 8192."""
    cores = cores or usable_cores()
    return max(TOKENS_PER_CORE, min(MAX_DEFAULT_BUDGET, TOKENS_PER_CORE * cores))


def available_ram_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = CGROUP) -> int | None:
    """``MemAvailable`` from /proc/meminfo, bounded by what a cgroup v2 memory limit leaves
    (``memory.max`` - ``memory.current``); None where neither can be read."""
    available: int | None = None
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    limit, current = _read(cgroup / "memory.max"), _read(cgroup / "memory.current")
    if limit and limit != "max" and current:
        try:
            left = max(0, int(limit) - int(current))
        except ValueError:
            return available
        available = left if available is None else min(available, left)
    return available


def default_kv_cache_bytes(device_type: str) -> int:
    """Bytes for the KV pool when neither ``num_kv_blocks`` nor ``kv_cache_memory_gb`` is set."""
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free * GPU_KV_FRACTION)
    available = available_ram_bytes()
    if available is None:
        return 1 << 30
    return max(CPU_KV_FLOOR_BYTES, min(CPU_KV_CAP_BYTES, int(available * CPU_KV_FRACTION)))
