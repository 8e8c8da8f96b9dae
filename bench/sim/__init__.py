"""SIMULATOR of LLM engines for routing benchmarks. Never imported by production code.

A timed model of an engine (paged KV cache with LRU prefix caching, per-token prefill
and decode costs, a token budget per step) that exposes the engine's routing surface:
the same ``/metrics`` names and ``/shoal/kv/digest``. It runs in-process under a
virtual clock (``fleet.py``, driving the router's real picking plugins) or as real
asyncio HTTP servers (``server.py``).
"""
