"""Acceptance 1: what a local sandbox cannot do (network, writes, memory, CPU, orphans, output)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _sandbox_helpers import make_class, needs_root, shell_tool

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import SandboxUnavailable, ToolCall, ToolResult
from shoal.router.sandboxes.local import Isolation, LocalBackend
from shoal.router.sandboxes.local_process import uid_processes
from shoal.router.sandboxes.settings import SandboxSettings

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
)


def run(backend: LocalBackend, cls: ProgramClassConfig, tool: str, stdin: bytes = b"", timeout_s: float = 20,
        max_output: int = 65536) -> ToolResult:  # fmt: skip
    sandbox = backend.create("sb-" + tool, cls, "p1")
    try:
        spec = cls.tool(tool)
        assert spec is not None
        return backend.run(sandbox, cls, ToolCall(spec, stdin, timeout_s, max_output))
    finally:
        backend.destroy(sandbox)


@pytest.fixture
def listener() -> tuple[str, int]:
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: [server.accept()[0].close() for _ in range(4)], daemon=True).start()
    return "127.0.0.1", server.getsockname()[1]


@needs_root
@pytest.mark.parametrize("target", ["loopback", "elsewhere"])
def test_network_none_cannot_connect(backend: LocalBackend, listener: tuple[str, int], target: str) -> None:
    host, port = listener if target == "loopback" else ("10.1.2.3", 80)
    tools = [{"name": "connect", "command": ["python3", "-c", CONNECT, host, str(port)]}]
    result = run(backend, make_class(tools=tools, network="none"), "connect")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("refused 101"), result.stdout  # ENETUNREACH: no route at all


@needs_root
def test_network_egress_reaches_loopback(backend: LocalBackend, listener: tuple[str, int]) -> None:
    """The same probe succeeds with network: egress (the test above can fail)."""
    tools = [{"name": "connect", "command": ["python3", "-c", CONNECT, listener[0], str(listener[1])]}]
    result = run(backend, make_class(tools=tools, network="egress"), "connect")
    assert result.stdout.strip() == "connected", result


@needs_root
def test_cannot_write_outside_its_directory(backend: LocalBackend, tmp_path: Path) -> None:
    marker = f"shoal-escape-{os.getpid()}-{time.time_ns()}"
    outside = [str(tmp_path), str(backend.dir), "/root", str(Path.cwd()), "/etc"]
    shared = ["/tmp", "/var/tmp", "/dev/shm"]  # world-writable on the host: inside, they are its directory
    script = " ; ".join(f"echo x > {d}/{marker} 2>/dev/null && echo WROTE {d}" for d in outside)
    script += f" ; echo inside > ./{marker} && " + " && ".join(f"echo x > {d}/{marker}" for d in shared) + " && echo OK"
    cls = make_class(tools=[shell_tool("write", script)])
    sandbox = backend.create("sb-write", cls, "p1")
    try:
        spec = cls.tool("write")
        assert spec is not None
        result = backend.run(sandbox, cls, ToolCall(spec, b"", 20, 65536))
        assert "WROTE" not in result.stdout, result.stdout
        assert result.stdout.strip().endswith("OK"), result
        assert (Path(sandbox.location) / marker).read_text() == "x\n"  # its /tmp is its own directory
        for d in outside + shared:
            assert not (Path(d) / marker).exists(), d
        assert os.stat(sandbox.location).st_uid == sandbox.uid != 0
    finally:
        backend.destroy(sandbox)


@needs_root
def test_memory_limit_stops_a_hog(backend: LocalBackend) -> None:
    hog = "b = bytearray(1 << 30); print('allocated')"
    cls = make_class(tools=[{"name": "hog", "command": ["python3", "-c", hog]}], resources={"memoryBytes": 256 << 20})
    result = run(backend, cls, "hog")
    assert result.exit_code != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


@needs_root
def test_cpu_limit_stops_a_hog(backend: LocalBackend) -> None:
    cls = make_class(tools=[{"name": "spin", "command": ["python3", "-c", "while True: pass"]}],
                     resources={"cpuSeconds": 1})  # fmt: skip
    result = run(backend, cls, "spin", timeout_s=30)
    assert not result.timed_out and result.duration_s < 10
    assert result.exit_code in (-9, -24)  # SIGXCPU at the soft limit, SIGKILL at the hard one


@needs_root
def test_timeout_kills_the_whole_group_and_escapees(backend: LocalBackend) -> None:
    tag = f"{time.time_ns() % 10**6}"
    script = f"setsid sleep 300.{tag} & (sleep 301.{tag} &) ; sleep 302.{tag}"
    cls = make_class(tools=[shell_tool("hang", script)])
    sandbox = backend.create("sb-hang", cls, "p1")
    try:
        spec = cls.tool("hang")
        assert spec is not None
        began = time.monotonic()
        result = backend.run(sandbox, cls, ToolCall(spec, b"", 1.0, 65536))
        assert result.timed_out and result.exit_code == -9 and time.monotonic() - began < 5
        assert sandbox.uid is not None and uid_processes(sandbox.uid) == []
        assert not [p for p in psutil.process_iter(["cmdline"]) if tag in " ".join(p.info["cmdline"] or [])]
    finally:
        backend.destroy(sandbox)


@needs_root
def test_background_process_does_not_outlive_its_call(backend: LocalBackend) -> None:
    cls = make_class(tools=[shell_tool("daemon", "setsid sleep 300 >/dev/null 2>&1 & echo started")])
    sandbox = backend.create("sb-daemon", cls, "p1")
    try:
        spec = cls.tool("daemon")
        assert spec is not None
        result = backend.run(sandbox, cls, ToolCall(spec, b"", 10, 65536))
        assert result.stdout == "started\n" and result.exit_code == 0 and result.duration_s < 5
        assert backend.usage(sandbox).processes == 0
    finally:
        backend.destroy(sandbox)


def test_output_is_bounded(backend: LocalBackend) -> None:
    script = "head -c 5000000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero | tr '\\0' b >&2; exit 4"
    result = run(backend, make_class(tools=[shell_tool("loud", script)], network="egress"), "loud", max_output=1000)
    assert result.stdout == "a" * 1000 and result.stdout_truncated
    assert result.stderr == "b" * 1000 and result.stderr_truncated
    assert result.exit_code == 4 and not result.timed_out


def test_arguments_arrive_on_stdin_and_exit_code_is_kept(backend: LocalBackend) -> None:
    cls = make_class(tools=[shell_tool("echo", "cat; echo; pwd; exit 7")], network="egress")
    sandbox = backend.create("sb-echo", cls, "p1")
    try:
        spec = cls.tool("echo")
        assert spec is not None
        args = b'{"path": "a b", "n": 1}' * 5000  # more than a pipe buffer
        result = backend.run(sandbox, cls, ToolCall(spec, args, 10, 1 << 20))
        assert result.stdout == args.decode() + "\n" + sandbox.location + "\n" and result.exit_code == 7
    finally:
        backend.destroy(sandbox)


def test_network_none_is_refused_without_namespaces(tmp_path: Path) -> None:
    settings = SandboxSettings(state_dir=str(tmp_path), router_id="r")
    backend = LocalBackend(settings, Isolation(root=False, network_namespace=False, mount_namespace=False))
    with pytest.raises(SandboxUnavailable, match="network: none needs network namespaces"):
        backend.check(make_class(network="none"))
    backend.check(make_class(network="egress"))
    with pytest.raises(SandboxUnavailable, match="image needs the kubernetes"):
        backend.check(ProgramClassConfig.model_validate({"name": "k", "model": "m", "sandbox": {"image": "busybox"}}))


@needs_root
def test_failed_preparation_leaves_nothing(backend: LocalBackend) -> None:
    cls = make_class(prepare=["sh", "-c", "echo half > f; echo broken >&2; exit 3"])
    with pytest.raises(Exception, match=r"exit code 3.*broken"):
        backend.create("sb-bad", cls, "p1")
    assert backend.list_existing() == [] and list(backend.dir.iterdir()) == []
    assert list(backend.uid_dir.iterdir()) == []


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A world-readable directory outside /tmp (inside a sandbox, /tmp is the sandbox's own directory)."""
    path = Path(f"/opt/shoal-test-{os.getpid()}-{time.time_ns()}")
    path.mkdir(mode=0o755, parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@needs_root
def test_router_state_and_hidden_paths_are_unreadable(outside_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, other, public = outside_tmp / "router-state", outside_tmp / "other", outside_tmp / "public"
    for d in (state / "api-keys", other, public):
        d.mkdir(parents=True, mode=0o755)
    (state / "api-keys" / "alice").write_text("sk-secret\n")  # world-readable, like a router's files
    (other / "config").write_text("hidden\n")
    (public / "readme").write_text("public\n")
    monkeypatch.setenv("SHOAL_STATE_DIR", str(state))
    settings = SandboxSettings(state_dir=str(state / "sandboxes"), router_id="hide", hidden_paths=[str(other)])
    backend = LocalBackend(settings)
    script = f"cat {state}/api-keys/alice; cat {other}/config; ls {backend.dir}; cat {public}/readme; echo done"
    result = run(backend, make_class(tools=[shell_tool("peek", script)]), "peek")
    assert "sk-secret" not in result.stdout and "hidden" not in result.stdout and "sb-" not in result.stdout
    assert result.stdout == "public\ndone\n", result  # what is not hidden stays readable: the test can fail


def test_without_root_a_timeout_still_kills_the_call_group(tmp_path: Path) -> None:
    """The reduced mode (no uid of its own): the process group and its descendants are killed."""
    settings = SandboxSettings(state_dir=str(tmp_path), router_id="plain")
    backend = LocalBackend(settings, Isolation(root=False, network_namespace=False, mount_namespace=False))
    tag = f"{time.time_ns() % 10**6}"
    cls = make_class(tools=[shell_tool("hang", f"sleep 310.{tag} & sleep 311.{tag}")], network="egress")
    sandbox = backend.create("sb-plain", cls, "p1")
    assert sandbox.uid is None
    spec = cls.tool("hang")
    assert spec is not None
    result = backend.run(sandbox, cls, ToolCall(spec, b"", 0.5, 1000))
    assert result.timed_out and result.exit_code == -9
    time.sleep(0.1)
    assert not [p for p in psutil.process_iter(["cmdline", "status"])
                if tag in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]  # fmt: skip
    backend.destroy(sandbox)
    assert backend.list_existing() == []


def test_uids_of_host_users_are_never_given_to_a_sandbox(tmp_path: Path) -> None:
    import pwd

    taken = pwd.getpwnam("nobody").pw_uid  # a real account: a sandbox with its uid could touch its files
    settings = SandboxSettings(state_dir=str(tmp_path), router_id="uids", uid_base=taken, uid_count=2)
    backend = LocalBackend(settings, Isolation(root=True, network_namespace=True, mount_namespace=True))
    assert backend._claim_uid("sb-x") == taken + 1  # nobody's uid is skipped


def test_every_rlimit_has_a_number() -> None:
    from shoal.router.sandboxes.spec import SandboxResources

    defaults = LocalBackend._rlimits(SandboxResources())
    assert defaults == [f"--as={8 << 30}", "--nproc=256", "--nofile=1024", f"--fsize={1 << 30}"]
    chosen = LocalBackend._rlimits(SandboxResources(cpu_seconds=3, memory_bytes=1 << 28, max_processes=8))
    assert chosen == ["--cpu=3", f"--as={1 << 28}", "--nproc=8", "--nofile=1024", f"--fsize={1 << 30}"]
