"""Prometheus metrics under vLLM's names (``vllm:*``) plus ``shoal:*`` extras.

Existing autoscalers (KEDA, HPA adapters), routers and Grafana boards read these
names, so they must not drift. Engine-side gauges and counters are read from the
latest ``EngineStats`` snapshot at scrape time (the engine keeps cumulative
counters); request latencies are histograms observed as outputs arrive. Each app
has its own registry so several servers can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LoopStats = tuple[int, float, int]
"""(steps run, seconds busy in step(), steps that failed)."""

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)  # fmt: skip
_REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                    240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class _EngineStatsCollector(Collector):
    """Gauges and counters computed from the engine's latest stats snapshot."""

    def __init__(self, model_name: str, stats: Callable[[], Any], loop_stats: Callable[[], LoopStats]) -> None:
        self._model = model_name
        self._stats = stats
        self._loop_stats = loop_stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        labels = ["model_name"]
        value = [self._model]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(value, float(v))
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(value, float(v))
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", s.kv_usage)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield counter("vllm:num_preemptions", "Preemptions (recompute).", s.num_preemptions)
        yield counter("vllm:prompt_tokens", "Prefill tokens processed.", s.prompt_tokens)
        yield counter("vllm:generation_tokens", "Tokens generated.", s.generation_tokens)
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "KV-cache configuration.", labels=["model_name", "block_size", "num_gpu_blocks"]
        )
        info.add_metric([self._model, str(s.block_size), str(s.num_blocks)], 1.0)
        yield info
        yield gauge("shoal:pinned_blocks", "KV blocks held for programs (out of eviction).", s.num_pinned_blocks)
        yield gauge("shoal:programs", "Programs with retained KV blocks.", s.num_programs)
        yield gauge("shoal:free_blocks", "KV blocks free (incl. cached, evictable).", s.num_free_blocks)
        yield gauge("shoal:kv_blocks_total", "KV blocks in the pool.", s.num_blocks)
        yield gauge("shoal:kv_blocks_cached", "Free KV blocks that still hold a reusable prefix.",
                    getattr(s, "num_cached_blocks", 0))  # fmt: skip
        yield gauge("shoal:kv_block_size", "Tokens per KV block.", s.block_size)
        if getattr(s, "spec_num_drafts", 0):
            yield counter("vllm:spec_decode_num_drafts", "Drafts verified (speculative decoding).", s.spec_num_drafts)
            yield counter("vllm:spec_decode_num_draft_tokens", "Drafted tokens verified.", s.spec_num_draft_tokens)
            yield counter("vllm:spec_decode_num_accepted_tokens", "Drafted tokens accepted.", s.spec_num_accepted_tokens)
            per_pos = CounterMetricFamily(
                "vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted drafted tokens by position in the draft.",
                labels=["model_name", "position"],
            )  # fmt: skip
            for pos, count in enumerate(s.spec_accepted_per_pos):
                per_pos.add_metric([self._model, str(pos)], float(count))
            yield per_pos
            yield gauge("shoal:spec_decode_acceptance_rate", "Accepted / drafted tokens since start.",
                        s.spec_num_accepted_tokens / max(1, s.spec_num_draft_tokens))  # fmt: skip
            yield gauge("shoal:spec_decode_mean_accepted_length", "Tokens emitted per verified draft (accepted + 1).",
                        1 + s.spec_num_accepted_tokens / s.spec_num_drafts)  # fmt: skip
        steps, busy_s, failed = self._loop_stats()
        yield counter("shoal:engine_steps", "Engine steps run.", steps)
        yield counter("shoal:engine_failed_steps", "Engine steps that raised (their requests failed).", failed)
        yield counter("shoal:engine_busy_seconds", "Seconds the engine thread spent in step().", busy_s)


class _Observer:
    """Per-request timing hooks bound to one model's histogram children."""

    __slots__ = ("_m",)

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def on_first_token(self, ttft_s: float, queue_s: float) -> None:
        self._m.ttft.observe(ttft_s)
        self._m.queue_time.observe(queue_s)

    def on_tokens(self, itl_s: float) -> None:
        self._m.itl.observe(itl_s)

    def on_finish(self, e2e_s: float, finish_reason: str | None) -> None:
        self._m.e2e.observe(e2e_s)
        self._m.success.labels(self._m.model_name, finish_reason or "unknown").inc()


class ServerMetrics:
    """The server's registry; ``render()`` is the /metrics body."""

    def __init__(
        self, model_name: str, stats: Callable[[], Any], loop_stats: Callable[[], LoopStats] = lambda: (0, 0.0, 0)
    ) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineStatsCollector(model_name, stats, loop_stats))
        labels = ["model_name"]

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between output steps.", _ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Arrival to finish.", _REQUEST_BUCKETS)
        self.queue_time = hist("vllm:request_queue_time_seconds", "Arrival to first scheduled.", _REQUEST_BUCKETS)
        self.success = Counter(
            "vllm:request_success", "Finished requests.", ["model_name", "finished_reason"], registry=self.registry
        )
        self.rejected = Counter(
            "shoal:requests_rejected", "Requests refused before reaching the engine.", ["model_name", "reason"],
            registry=self.registry,
        )  # fmt: skip

    def observer(self) -> _Observer:
        return _Observer(self)

    def reject(self, reason: str) -> None:
        self.rejected.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
