"""AgentProgram status from what its router reports (pure), and the router's answer parsed strictly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.operator.program_status import program_status, router_address
from shoal.operator.router_classes import ClassesUnavailable, ClassReport, HttpClassesFetcher, parse_classes

BODY: dict[str, Any] = {"metadata": {"name": "coder", "namespace": "team", "generation": 3}, "status": {}}
NOW = "2026-11-30T16:00:00Z"


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_only_when_the_router_reports_the_class() -> None:
    report = ClassReport("coder", active=2, paused=1, queued=4, steps_per_minute=30.0)
    loaded = program_status(BODY, "front", {"coder": report}, "", NOW)
    assert conditions(loaded) == {"Ready": ("True", "Available"), "Progressing": ("False", "RolloutComplete"),
                                  "Degraded": ("False", "AsExpected")}  # fmt: skip
    assert (loaded["activePrograms"], loaded["pausedPrograms"], loaded["queuedPrograms"]) == (2, 1, 4)
    assert loaded["stepsPerMinute"] == 30.0 and loaded["observedGeneration"] == 3

    for reports, why in (({"other": ClassReport("other")}, ""), (None, "GET http://x: HTTP 503")):
        waiting = program_status(BODY, "front", reports, why, NOW)
        assert conditions(waiting)["Ready"] == ("False", "ClassNotLoaded")
        assert conditions(waiting)["Degraded"] == ("False", "AsExpected")
        assert waiting["activePrograms"] is None  # merge-patch null: no stale counts
        if why:
            assert why in waiting["conditions"][0]["message"]


def test_router_answer_is_parsed_strictly() -> None:
    reports = parse_classes({"classes": [{"name": "a", "active": 1, "paused": 0, "queued": 2, "steps_per_minute": 1.5},
                                         {"name": "b"}]})  # fmt: skip
    assert reports == {"a": ClassReport("a", 1, 0, 2, 1.5), "b": ClassReport("b")}
    bad: Any
    for bad in ({}, {"classes": {}}, {"classes": [{"active": 1}]}, {"classes": [{"name": "a", "active": -1}]},
                {"classes": [{"name": "a", "queued": "many"}]}, {"classes": [{"name": "a", "paused": True}]}, []):
        with pytest.raises(ClassesUnavailable):
            parse_classes(bad)


def test_fetcher_reaches_the_service_and_reports_failures_in_one_line() -> None:
    router = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router",
              "metadata": {"name": "front", "namespace": "team"}, "spec": {"pools": [{"name": "p"}]}}  # fmt: skip
    address = router_address(router)
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
