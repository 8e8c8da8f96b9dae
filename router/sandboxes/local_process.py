"""Running one process tree with a wall-clock limit and bounded output, and finding what it left.

Each call starts in a new session (its own process group). Past the deadline the whole
group is killed with SIGKILL, then ``sweep`` removes anything that escaped the group (a
sandbox's uid owns nothing else, so every process of that uid goes).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from shoal.router.sandboxes.backend import SandboxError


@dataclass(frozen=True)
class ProcessOutcome:
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int | None
    duration_s: float
    timed_out: bool


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and drains the rest (the writer never blocks)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.data += chunk[:room]


_DRAIN_AFTER_EXIT_S = 0.5
"""After the main process ends (and leftovers are swept), how long its pipes may still deliver."""


def run_process(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: bytes,
    timeout_s: float,
    max_output_bytes: int,
    sweep: Callable[[int], None],
) -> ProcessOutcome:
    """Run ``argv``; ``sweep(pgid)`` must kill whatever the call left (it runs after every call)."""
    start = time.monotonic()
    deadline = start + timeout_s
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )  # fmt: skip
    out, err = _Capture(max_output_bytes), _Capture(max_output_bytes)
    timed_out = False
    try:
        timed_out = not _pump(proc, stdin, out, err, deadline)
        if timed_out:
            _kill_group(proc.pid)
    finally:
        sweep(proc.pid)
        exit_code = proc.wait()
        _pump_rest(proc, out, err)
    return ProcessOutcome(
        bytes(out.data), bytes(err.data), out.truncated, err.truncated, exit_code, time.monotonic() - start, timed_out
    )


def _pump(proc: subprocess.Popen[bytes], stdin: bytes, out: _Capture, err: _Capture, deadline: float) -> bool:
    """Feed stdin and read both pipes until the process exits; False past the deadline."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, None)
    else:
        proc.stdin.close()
    try:
        while proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in sel.select(min(remaining, 0.05)):
                if key.data is None:
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
        return True
    finally:
        sel.close()
        if not proc.stdin.closed:
            proc.stdin.close()


def _pump_rest(proc: subprocess.Popen[bytes], out: _Capture, err: _Capture) -> None:
    """Read what is left in the pipes (everything that could write to them is gone by now)."""
    assert proc.stdout is not None and proc.stderr is not None
    end = time.monotonic() + _DRAIN_AFTER_EXIT_S
    for stream, capture in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        while time.monotonic() < end:
            try:
                chunk = os.read(stream.fileno(), 65536)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if not chunk:
                break
            capture.feed(chunk)
        stream.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_group_and_children(pgid: int) -> None:
    """Without a uid of its own, a call is cleaned up by its process group and descendants."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pgid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    _kill_group(pgid)


def uid_processes(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    pids = []
    for p in psutil.process_iter(["uids", "status"]):
        info = p.info
        if info["uids"] is not None and info["uids"].real == uid and info["status"] != psutil.STATUS_ZOMBIE:
            pids.append(p.pid)
    return pids


def kill_uid(uid: int, attempts: int = 100) -> None:
    """SIGKILL every process of ``uid`` until none is left (a forking tool cannot outrun it:
    ``kill(-1)`` as that uid signals all of them at once, and RLIMIT_NPROC bounds new ones)."""
    for _ in range(attempts):
        if not uid_processes(uid):
            return
        subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "kill", "-9", "-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        time.sleep(0.002)
    raise SandboxError(f"processes of uid {uid} survive SIGKILL")


def listening_ports(pids: list[int]) -> int:
    """Listening TCP sockets held by ``pids`` (read in each process's own network namespace)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    if not inodes:
        return 0
    listening: set[str] = set()
    for pid in pids:
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                        listening.add(fields[9])
    return len(listening)


def disk_bytes(path: str) -> int:
    """Bytes allocated under ``path`` (symlinks not followed)."""
    total = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
