"""Local sandboxes: a private directory per sandbox and an isolated process tree per tool call.

As root, every sandbox gets a uid of its own from a configured range; its directory is
the only place that uid owns, and each call runs in a fresh mount namespace where the
world-writable places (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``) are that
directory, so it is the only place the tool can write. ``network: none`` adds a network
namespace of its own (no interface but a down loopback: even 127.0.0.1 is unreachable).
rlimits come from the class's resources. Every call's leftovers are killed when it ends.

Without root none of that is possible except, perhaps, the network namespace: the
backend says so at start-up, runs tools as the router's own user, and refuses
``network: none`` unless ``unshare -n`` works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import (
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    ToolCall,
    ToolResult,
    Usage,
)
from shoal.router.sandboxes.local_process import (
    disk_bytes,
    kill_group_and_children,
    kill_uid,
    listening_ports,
    run_process,
    uid_processes,
)
from shoal.router.sandboxes.settings import SandboxSettings
from shoal.router.sandboxes.spec import SandboxResources

log = logging.getLogger("shoal.router.sandboxes")

_WRITABLE_SHARED = ("/var/tmp", "/run/lock", "/dev/shm", "/tmp")
"""Bound over with the sandbox directory inside each call (``/tmp`` last: the directory may live under it)."""
_MOUNT_SCRIPT = (
    'd="$1"; shift; '
    'while [ "$1" != -- ]; do [ -d "$1" ] && { mount --bind "$d" "$1" || exit 125; }; shift; done; shift; '
    'while [ "$1" != -- ]; do [ -d "$1" ] && { mount -t tmpfs -o size=4k,mode=000 none "$1" || exit 125; }; '
    'shift; done; shift; exec "$@"'
)
"""Inside the call's mount namespace, as root: the sandbox directory over each shared writable
place, then an empty tmpfs over each hidden path, then the tool chain."""
_PATH = "/usr/local/bin:/usr/bin:/bin"
_DEFAULT_LIMITS = SandboxResources(
    memory_bytes=8 << 30, max_processes=256, max_open_files=1024, max_file_bytes=1 << 30
)
"""Applied where a class leaves a limit unset: every limit has a number."""


@dataclass(frozen=True)
class Isolation:
    """What this host lets the local backend do (probed once at start-up)."""

    root: bool
    network_namespace: bool
    mount_namespace: bool

    def missing(self) -> list[str]:
        gaps = []
        if not self.root:
            gaps.append("not root: tools run as the router's own user and may write wherever it can")
        if not self.network_namespace:
            gaps.append("no network namespaces: classes with network: none are refused")
        if self.root and not self.mount_namespace:
            gaps.append("no mount namespaces: classes are refused (shared /tmp would be writable)")
        return gaps


def probe_isolation() -> Isolation:
    def works(*argv: str) -> bool:
        try:
            return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    root = os.geteuid() == 0
    return Isolation(
        root=root,
        network_namespace=works("unshare", "--net", "true"),
        mount_namespace=root and works("unshare", "--mount", "--propagation", "private", "true"),
    )


def _uid_in_use(uid: int) -> bool:
    """A user of this host (it may own files a sandbox must not touch) or a running process has it."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return bool(uid_processes(uid))
    return True


def default_state_root() -> Path:
    base = os.environ.get("SHOAL_STATE_DIR")
    return Path(base) / "sandboxes" if base else Path("/tmp/shoal-sandboxes")


class LocalBackend:
    """Sandboxes as directories under ``<stateRoot>/<routerId>/``, each with a JSON record."""

    name = "local"

    def __init__(self, settings: SandboxSettings, isolation: Isolation | None = None) -> None:
        self.settings = settings
        self.isolation = isolation or probe_isolation()
        self.root = Path(settings.state_dir) if settings.state_dir else default_state_root()
        self.dir = self.root / settings.router_id
        self.uid_dir = self.root / "uids"
        for d in (self.root, self.dir, self.uid_dir):
            d.mkdir(parents=True, exist_ok=True)
            if self.isolation.root:
                os.chmod(d, 0o700)  # a tool reaches its own directory only (cwd and /tmp)
        self.hidden = [str(Path(p)) for p in settings.hidden_paths]
        if os.environ.get("SHOAL_STATE_DIR"):  # the router's own state (configs, API keys, logs)
            self.hidden.append(os.environ["SHOAL_STATE_DIR"])
        for gap in self.isolation.missing():
            log.warning("local sandboxes: %s", gap)

    # the SandboxBackend interface ------------------------------------------------------------------

    def check(self, cls: ProgramClassConfig) -> None:
        spec = cls.sandbox
        if spec is None:
            raise SandboxUnavailable(f"class {cls.name} has no sandbox")
        if spec.command is None:
            raise SandboxUnavailable(
                f"class {cls.name}: sandbox.image needs the kubernetes sandbox backend (local runs sandbox.command)"
            )
        if spec.network == "none" and not self.isolation.network_namespace:
            raise SandboxUnavailable(
                f"class {cls.name}: network: none needs network namespaces, which this host does not allow"
            )
        if self.isolation.root and not self.isolation.mount_namespace:
            raise SandboxUnavailable(f"class {cls.name}: mount namespaces are unavailable; refusing to run tools")

    def create(self, sandbox_id: str, cls: ProgramClassConfig, program_id: str | None) -> Sandbox:
        self.check(cls)
        assert cls.sandbox is not None and cls.sandbox.command is not None
        uid = self._claim_uid(sandbox_id) if self.isolation.root else None
        sandbox = Sandbox(sandbox_id, cls.name, program_id, str(self.dir / sandbox_id), uid, time.time())
        try:
            self._write_record(sandbox)
            work = Path(sandbox.location)
            work.mkdir(mode=0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            result = self._run(sandbox, cls, list(cls.sandbox.command), b"", self.settings.prepare_timeout_s, 4096)
            if result.timed_out or result.exit_code != 0:
                detail = "timed out" if result.timed_out else f"exit code {result.exit_code}"
                tail = result.stderr.strip()[-300:]
                raise SandboxError(f"preparing a sandbox of class {cls.name} failed ({detail}): {tail}")
        except BaseException:
            self.destroy(sandbox)
            raise
        return sandbox

    def assign(self, sandbox: Sandbox, program_id: str) -> Sandbox:
        assigned = replace(sandbox, program_id=program_id)
        self._write_record(assigned)
        return assigned

    def run(self, sandbox: Sandbox, cls: ProgramClassConfig, call: ToolCall) -> ToolResult:
        return self._run(sandbox, cls, list(call.tool.command), call.stdin, call.timeout_s, call.max_output_bytes)

    def usage(self, sandbox: Sandbox) -> Usage:
        pids = uid_processes(sandbox.uid) if sandbox.uid is not None else []
        work = Path(sandbox.location)
        return Usage(len(pids), listening_ports(pids), disk_bytes(str(work)) if work.exists() else 0)

    def destroy(self, sandbox: Sandbox) -> None:
        if sandbox.uid is not None:
            kill_uid(sandbox.uid)
        shutil.rmtree(sandbox.location, ignore_errors=True)
        if Path(sandbox.location).exists():
            raise SandboxError(f"could not remove {sandbox.location}")
        if sandbox.uid is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.uid_dir / str(sandbox.uid)).unlink()
        with contextlib.suppress(FileNotFoundError):
            self._record_path(sandbox.sandbox_id).unlink()

    def list_existing(self) -> list[Sandbox]:
        found: dict[str, Sandbox] = {}
        for record in self.dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                data = json.loads(record.read_text())
                found[data["sandbox_id"]] = Sandbox(
                    data["sandbox_id"], data["class_name"], data["program_id"], data["location"],
                    data["uid"], data["created_at"],
                )  # fmt: skip
        for work in self.dir.iterdir():  # a directory whose record is gone
            if work.is_dir() and work.name not in found:
                found[work.name] = Sandbox(work.name, "", None, str(work), None, 0.0)
        for claim in self.uid_dir.iterdir():  # a uid claimed just before a crash
            with contextlib.suppress(OSError, ValueError, KeyError):
                owner = json.loads(claim.read_text())
                if owner["router_id"] == self.settings.router_id and owner["sandbox_id"] not in found:
                    sid = owner["sandbox_id"]
                    found[sid] = Sandbox(sid, "", None, str(self.dir / sid), int(claim.name), 0.0)
        return list(found.values())

    # internals -------------------------------------------------------------------------------------

    def _run(
        self, sandbox: Sandbox, cls: ProgramClassConfig, argv: list[str], stdin: bytes, timeout_s: float, max_output: int
    ) -> ToolResult:
        assert cls.sandbox is not None
        work = sandbox.location
        home = "/tmp" if sandbox.uid is not None else work
        env = {"PATH": _PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "SHOAL_SANDBOX_ID": sandbox.sandbox_id}
        if sandbox.program_id is not None:
            env["SHOAL_PROGRAM_ID"] = sandbox.program_id
        wrapped = self._isolate(sandbox, cls, argv)

        def sweep(pgid: int) -> None:
            if sandbox.uid is not None:
                kill_uid(sandbox.uid)
            else:
                kill_group_and_children(pgid)

        try:
            outcome = run_process(
                wrapped, cwd=work, env=env, stdin=stdin, timeout_s=timeout_s, max_output_bytes=max_output, sweep=sweep,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise SandboxError(f"cannot start the sandbox's process: {exc.filename} not found") from None
        return ToolResult(
            stdout=outcome.stdout.decode("utf-8", "replace"),
            stderr=outcome.stderr.decode("utf-8", "replace"),
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            exit_code=outcome.exit_code,
            duration_s=outcome.duration_s,
            timed_out=outcome.timed_out,
        )

    def _isolate(self, sandbox: Sandbox, cls: ProgramClassConfig, argv: list[str]) -> list[str]:
        """argv of the chain: namespaces -> bind mounts -> drop to the sandbox uid -> rlimits -> tool."""
        assert cls.sandbox is not None
        spec = cls.sandbox
        chain: list[str] = []
        unshare = ["--net"] if spec.network == "none" else []
        if sandbox.uid is not None:
            unshare += ["--mount", "--propagation", "private"]
        if unshare:
            chain += ["unshare", *unshare, "--"]
        if sandbox.uid is not None:
            chain += ["sh", "-c", _MOUNT_SCRIPT, "shoal-sandbox", sandbox.location, *_WRITABLE_SHARED, "--",
                      *self.hidden, "--"]  # fmt: skip
            uid = str(sandbox.uid)
            chain += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                      "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip
        chain += ["prlimit", *self._rlimits(spec.resources), "--"]
        return chain + argv

    @staticmethod
    def _rlimits(res: SandboxResources) -> list[str]:
        def pick(value: int | None, default: int | None) -> int | None:
            return value if value is not None else default

        limits = {
            "--cpu": res.cpu_seconds,
            "--as": pick(res.memory_bytes, _DEFAULT_LIMITS.memory_bytes),
            "--nproc": pick(res.max_processes, _DEFAULT_LIMITS.max_processes),
            "--nofile": pick(res.max_open_files, _DEFAULT_LIMITS.max_open_files),
            "--fsize": pick(res.max_file_bytes, _DEFAULT_LIMITS.max_file_bytes),
        }
        return [f"{flag}={value}" for flag, value in limits.items() if value is not None]

    def _claim_uid(self, sandbox_id: str) -> int:
        """A uid no other sandbox on this machine holds (claims are files created with O_EXCL)."""
        owner = json.dumps({"router_id": self.settings.router_id, "sandbox_id": sandbox_id}).encode()
        start = hash(sandbox_id) % self.settings.uid_count
        for i in range(self.settings.uid_count):
            uid = self.settings.uid_base + (start + i) % self.settings.uid_count
            try:
                fd = os.open(self.uid_dir / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(owner)
            if _uid_in_use(uid):  # used outside Shoal: never share it (and never kill its processes)
                (self.uid_dir / str(uid)).unlink()
                continue
            return uid
        raise SandboxError("no free sandbox uid left (raise sandboxes.uidCount)")

    def _record_path(self, sandbox_id: str) -> Path:
        return self.dir / f"{sandbox_id}.json"

    def _write_record(self, sandbox: Sandbox) -> None:
        data = {
            "sandbox_id": sandbox.sandbox_id, "class_name": sandbox.class_name, "program_id": sandbox.program_id,
            "location": sandbox.location, "uid": sandbox.uid, "created_at": sandbox.created_at,
            "router_id": self.settings.router_id,
        }  # fmt: skip
        path = self._record_path(sandbox.sandbox_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
