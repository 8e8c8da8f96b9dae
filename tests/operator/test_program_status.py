"""AgentProgram status from what its router reports (pure), and the router's answer parsed strictly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.operator.program_status import program_status
from shoal.operator.router_classes import (
    ClassesUnavailable,
    ClassReport,
    HttpClassesFetcher,
    RouterAddress,
    RouterClasses,
    parse_classes,
)

BODY: dict[str, Any] = {"metadata": {"name": "coder", "namespace": "team", "generation": 3},
                        "spec": {"router": "front", "model": "smol", "priority": 80}, "status": {}}  # fmt: skip
NOW = "2026-11-30T16:00:00Z"
VERSION = (("model", "smol"), ("priority", 80), ("max_concurrent_programs", 8), ("lease_seconds", 600.0),
           ("tools", ()))  # fmt: skip


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_only_when_the_router_reports_the_current_class() -> None:
    report = ClassReport("coder", active=2, paused=1, queued=4, steps_per_minute=30.0, versions=(VERSION,))
    loaded = program_status(BODY, "front", RouterClasses({"coder": report}), "", NOW)
    assert conditions(loaded) == {"Ready": ("True", "Available"), "Progressing": ("False", "RolloutComplete"),
                                  "Degraded": ("False", "AsExpected")}  # fmt: skip
    assert (loaded["activePrograms"], loaded["pausedPrograms"], loaded["queuedPrograms"]) == (2, 1, 4)
    assert loaded["stepsPerMinute"] == 30.0 and loaded["observedGeneration"] == 3

    for answer, why in ((RouterClasses({"other": ClassReport("other")}), ""), (None, "GET http://x: HTTP 503")):
        waiting = program_status(BODY, "front", answer, why, NOW)
        assert conditions(waiting)["Ready"] == ("False", "ClassNotLoaded")
        assert conditions(waiting)["Degraded"] == ("False", "AsExpected")
        assert waiting["activePrograms"] is None  # merge-patch null: no stale counts
        if why:
            assert why in waiting["conditions"][0]["message"]

    # The router still runs the previous version of the class (priority 50), and its file had an error.
    old = ClassReport("coder", active=1, versions=((*VERSION[:1], ("priority", 50), *VERSION[2:]),))
    stale = program_status(BODY, "front", RouterClasses({"coder": old}, "classesFile: bad yaml"), "", NOW)
    assert conditions(stale)["Ready"] == ("False", "ClassNotLoaded")
    message = stale["conditions"][0]["message"]
    assert "older version: priority 50" in message and "classesFile: bad yaml" in message
    assert stale["activePrograms"] == 1


def test_router_answer_is_parsed_strictly() -> None:
    answer = parse_classes({"object": "list", "error": None, "data": [
        {"name": "a", "active": 1, "paused": 0, "queued": 2, "steps_per_minute": 1.5, "model": "smol",
         "priority": 80, "max_concurrent_programs": 8, "lease_seconds": 600, "tools": []},
        {"name": "b"}]})  # fmt: skip
    assert answer.classes == {"a": ClassReport("a", 1, 0, 2, 1.5, (VERSION,)), "b": ClassReport("b")}
    assert answer.file_error is None
    assert parse_classes({"data": [], "error": "classesFile x:\\n bad"}).file_error == "classesFile x:\\n bad"
    bad: Any
    for bad in ({}, {"data": {}}, {"data": [{"active": 1}]}, {"data": [{"name": "a", "active": -1}]},
                {"data": [{"name": "a", "queued": "many"}]}, {"data": [{"name": "a", "paused": True}]}, []):
        with pytest.raises(ClassesUnavailable):
            parse_classes(bad)


def test_fetcher_reaches_the_service_and_reports_failures_in_one_line() -> None:
    address = RouterAddress("team", "front", "front-router", 80, api_key="sk-x")
    assert HttpClassesFetcher().url(address) == "http://front-router.team.svc:80/v1/programs/classes"

    async def unreachable() -> str:
        fetcher = HttpClassesFetcher("http://127.0.0.1:9/{namespace}/{name}", timeout_s=2)
        try:
            await fetcher(address)
        except ClassesUnavailable as exc:
            return str(exc)
        finally:
            await fetcher.aclose()
        return ""

    message = asyncio.run(unreachable())
    assert message.startswith("GET http://127.0.0.1:9/team/front/v1/programs/classes") and "\n" not in message


def test_several_replicas_are_added_up_and_must_all_have_the_class() -> None:
    from shoal.operator.router_classes import merge_replicas

    old_version = (*VERSION[:1], ("priority", 50), *VERSION[2:])
    first = RouterClasses({"coder": ClassReport("coder", 2, 0, 1, 10.0, (VERSION,))})
    second = RouterClasses({"coder": ClassReport("coder", 1, 1, 0, 5.0, (VERSION,))})
    both = merge_replicas([first, second])
    assert both.replicas == 2 and both.classes["coder"] == ClassReport("coder", 3, 1, 1, 15.0, (VERSION,), 2)
    ready = program_status(BODY, "front", both, "", NOW)
    assert conditions(ready)["Ready"] == ("True", "Available") and ready["activePrograms"] == 3

    lagging = merge_replicas([first, RouterClasses({}, "classesFile: not there yet")])
    status = program_status(BODY, "front", lagging, "", NOW)
    assert conditions(status)["Ready"] == ("False", "ClassNotLoaded")
    assert "loaded by 1 of 2 router replicas" in status["conditions"][0]["message"]
    mixed = merge_replicas([first, RouterClasses({"coder": ClassReport("coder", versions=(old_version,))})])
    assert mixed.classes["coder"].versions == (VERSION, old_version)
    status = program_status(BODY, "front", mixed, "", NOW)
    assert "older version: priority 50" in status["conditions"][0]["message"]
