"""Load generation for ``bench/serve.py``: workloads, arrival processes, an SSE client, statistics, reports."""
