"""SIMULATOR of a fleet serving agent programs (bench/programs.py). Never imported by production code.

An agentic workload (``workload.py``), engines with paged KV blocks, pinning and recompute
preemption timed by a cost model fitted on the real engine (``engine.py``, ``costmodel.py``),
a closed-loop discrete-event fleet (``fleet.py``) and the program-scheduling policies
compared on identical traces (``policies/``, Shoal's through ``policies/shoal.py``).
"""
