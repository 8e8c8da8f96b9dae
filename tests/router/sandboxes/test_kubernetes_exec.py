"""Tool calls through the exec API, without a cluster: the wrapper the pod runs (executed here
by ``sh``), arguments on stdin, limits, bounded output, exit codes, the sweep after each call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_kubernetes_kmock import FakeExec, image_class

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import Sandbox, SandboxError, ToolCall, ToolResult
from shoal.router.sandboxes.kubernetes import _SWEEP, MAX_ARGUMENT_BYTES, KubernetesBackend
from shoal.router.sandboxes.settings import SandboxSettings


class Core:
    def connect_get_namespaced_pod_exec(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("called through the stream function only")


class Net:
    def read_namespaced_network_policy(self, name: str, namespace: str) -> dict[str, Any]:
        return {"metadata": {"name": name}}


def run(tmp_path: Path, cls: ProgramClassConfig, tool: str, stdin: bytes, max_output: int = 1000,
        timeout_s: float = 10) -> tuple[ToolResult, FakeExec]:  # fmt: skip
    fake = FakeExec(tmp_path)
    backend = KubernetesBackend(SandboxSettings(backend="kubernetes", namespace="team"), apis=lambda: (Core(), Net()),
                                stream_fn=fake)  # fmt: skip
    spec = cls.tool(tool)
    assert spec is not None
    sandbox = Sandbox("sb-1", cls.name, "p1", "shoal-sb-1")
    return backend.run(sandbox, cls, ToolCall(spec, stdin, timeout_s, max_output)), fake


def with_tools(*tools: dict[str, Any], **resources: Any) -> ProgramClassConfig:
    base = image_class().model_dump(by_alias=True)
    return ProgramClassConfig.model_validate({**base, "tools": list(tools),
                                              "sandbox": {"image": "busybox", "resources": resources}})  # fmt: skip


def test_arguments_on_stdin_failing_tool_exit_code_and_sweep(tmp_path: Path) -> None:
    cls = with_tools({"name": "t", "command": ["sh", "-c", "cat; echo; echo oops >&2; exit 3"]})
    result, fake = run(tmp_path, cls, "t", b'{"path": "it\'s $HOME `x`"}')
    assert result.stdout == '{"path": "it\'s $HOME `x`"}\n' and result.stderr == "oops\n"  # no shell expansion
    assert result.exit_code == 3 and not result.timed_out
    assert [c for _, c in fake.commands][-1] == _SWEEP


def test_output_is_bounded_and_limits_apply(tmp_path: Path) -> None:
    cls = with_tools({"name": "loud", "command": ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"]},
                     {"name": "big", "command": ["sh", "-c", "head -c 100000 /dev/zero > f; echo $?"]},
                     maxFileBytes=4096)  # fmt: skip
    loud, _ = run(tmp_path, cls, "loud", b"{}", max_output=300)
    assert loud.stdout == "a" * 300 and loud.stdout_truncated
    big, _ = run(tmp_path, cls, "big", b"{}")
    assert big.stdout.strip() != "0" and (tmp_path / "f").stat().st_size <= 4096  # RLIMIT_FSIZE via ulimit -f


def test_oversized_arguments_are_refused(tmp_path: Path) -> None:
    cls = with_tools({"name": "t", "command": ["cat"]})
    with pytest.raises(SandboxError, match="exceed"):
        run(tmp_path, cls, "t", b"x" * (MAX_ARGUMENT_BYTES + 1))
