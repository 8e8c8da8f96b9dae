"""The gateway's pure parts: engine capacity parsing, response observation, class reloading."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.router.endpoints import parse_kv_capacity
from shoal.router.programs.classes import ClassSource
from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig
from shoal.router.programs.gateway import CallTicket
from shoal.router.programs.response import ResponseObserver, Usage
from shoal.router.programs.state import EngineCapacity


def test_kv_capacity_from_engine_metrics() -> None:
    text = (
        "# HELP shoal:kv_blocks_total KV blocks in the pool.\n"
        'shoal:kv_blocks_total{model_name="m"} 64.0\n'
        'shoal:free_blocks{model_name="m"} 40\n'
        'shoal:kv_blocks_cached{model_name="m"} 7\n'
        'shoal:pinned_blocks{model_name="m"} 3\n'
        'shoal:kv_block_size{model_name="m"} 16.0\n'
        'shoal:programs{model_name="m"} 2\n'
        'vllm:num_requests_running{model_name="m"} 1\n'
    )
    assert parse_kv_capacity(text) == EngineCapacity(64, 40, 7, 3, 16)
    assert parse_kv_capacity('vllm:kv_cache_usage_perc{model_name="m"} 0.5\n') is None  # not a Shoal engine
    assert parse_kv_capacity("shoal:kv_blocks_total NaN\n") is None


def test_observer_reads_usage_and_tools_from_a_split_stream() -> None:
    event = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "bash", "arguments": ""}},
        {"index": 1, "function": {"name": "grep", "arguments": ""}}]}}]}
    later = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}
    stream = (
        f"data: {json.dumps(event)}\n\ndata: {json.dumps(later)}\n\n"
        ': shoal-usage {"prompt_tokens":120,"completion_tokens":9,"cached_tokens":96}\n\ndata: [DONE]\n\n'
    ).encode()
    observer = ResponseObserver()
    for i in range(0, len(stream), 7):  # any split of lines across chunks
        observer.feed_chunk(stream[i : i + 7])
    assert observer.usage == Usage(120, 9, 96)
    assert observer.tools == ["bash", "grep"]


def test_observer_reads_a_body_and_a_usage_chunk() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "edit", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 32}}}
    observer = ResponseObserver()
    observer.feed_body(json.dumps(body).encode())
    assert (observer.usage, observer.tools) == (Usage(50, 5, 32), ["edit"])
    chunked = ResponseObserver()
    chunked.feed_chunk(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n')
    assert chunked.usage == Usage(3, 1, 0)
    broken = ResponseObserver()
    broken.feed_body(b"not json")
    broken.feed_chunk(b": shoal-usage {oops\n\n")
    assert broken.usage is None


def test_ticket_sets_the_program_fields_and_drops_client_values() -> None:
    ticket = CallTicket("c1", "p1", "alice", "coder", 70, None, 12.3456)
    body = {"model": "m", "program_class": "coder", "program_retention_s": 9999,
            "extra_body": {"program_id": "p1", "program_class": "coder", "top_k": 5}}
    assert ticket.upstream_body(body) == {
        "model": "m", "extra_body": {"top_k": 5}, "program_id": "p1", "program_retention_s": 12.346,
    }


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_class_source_merges_reloads_and_keeps_the_last_good_classes(tmp_path: Path) -> None:
    path = tmp_path / "classes.yaml"
    inline = ProgramClassConfig(name="inline", model="m")
    source = ClassSource(ProgramsConfig(classes=[inline], classes_file=str(path)))
    assert source.poll() is False and source.error is not None and "classes.yaml" in source.error  # no file yet
    assert [c.name for c in source.classes] == ["inline"]
    _write(path, "classes:\n- {name: a, model: m}\n")
    assert source.poll() is True and source.error is None
    assert [c.name for c in source.classes] == ["inline", "a"]
    assert source.poll() is False  # unchanged file: not re-read
    for bad, why in (
        ("classes: [", "classesFile"),  # YAML syntax
        ("classes:\n- {name: a, model: m}\n- {name: a, model: m}\n", "defined twice"),
        ("classes:\n- {name: inline, model: m}\n", "both inline and in the file"),
        ("classes:\n- {name: b, model: m, priority: 500}\n", "priority"),
        ("[1, 2]\n", "expected a mapping"),
    ):
        _write(path, bad + " " * len(why))  # a different size: the change is seen
        assert source.poll() is False
        assert source.error is not None and why in source.error, (bad, source.error)
        assert [c.name for c in source.classes] == ["inline", "a"]
    _write(path, "classes: []\n")
    assert source.poll() is True and [c.name for c in source.classes] == ["inline"] and source.error is None


def test_replicas_count_each_others_load_unless_told_otherwise() -> None:
    from shoal.router.app import build_services
    from shoal.router.config import RouterConfig

    base: dict[str, object] = {"pools": [{"name": "p", "models": ["m"], "endpoints": {"static": ["http://127.0.0.1:9"]},
                                          "tokenizer": {"source": "none"}}]}
    peers = {"self": "http://127.0.0.1:7001", "static": ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]}
    for extra, expected in (({}, False), ({"peers": peers}, True),
                            ({"peers": peers, "programs": {"countForeignLoad": False}}, False)):
        services = build_services(RouterConfig.model_validate({**base, **extra}))
        assert services.programs is not None
        assert services.programs.scheduler.config.count_foreign_load is expected, extra
        services.hashing.shutdown()


def test_a_high_watermark_alone_brings_the_low_one_below_it() -> None:
    # A Router that lowers only highWatermark (below the default low one) must stay valid.
    assert ProgramsConfig.model_validate({"highWatermark": 0.8}).low_watermark == 0.8 - 0.10
    assert ProgramsConfig.model_validate({"high_watermark": 0.1}).low_watermark == 0.05
    explicit = ProgramsConfig.model_validate({"highWatermark": 0.8, "lowWatermark": 0.5})
    assert explicit.low_watermark == 0.5
    assert ProgramsConfig().low_watermark == 0.85
