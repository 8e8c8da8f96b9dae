"""Kubernetes sandboxes: one pod per sandbox (plus its NetworkPolicy), tools through pod exec.

The official client is synchronous; the manager calls these methods in threads. Every call
this backend makes to the API server is listed in ``RBAC_RULES`` (and in RBAC.md): the
operator grants the router's ServiceAccount exactly those, in its namespace only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import (
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    ToolCall,
    ToolResult,
    Usage,
)
from shoal.router.sandboxes.kubernetes_manifests import (
    PROGRAM_ANNOTATION,
    PROGRAM_LABEL,
    ROUTER_GROUP_LABEL,
    ROUTER_LABEL,
    SANDBOX_ID_LABEL,
    SANDBOX_LABEL,
    WORK_DIR,
    pod_name,
    program_label,
    sandbox_network_policy,
    sandbox_pod,
)
from shoal.router.sandboxes.settings import SandboxSettings

log = logging.getLogger("shoal.router.sandboxes")

RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("", "pods", ("create", "get", "list", "patch", "delete")),
    ("", "pods/exec", ("create", "get")),
    ("networking.k8s.io", "networkpolicies", ("create", "get", "list", "delete")),
)
"""(apiGroup, resource, verbs) of every API call below: the router's Role."""

MAX_ARGUMENT_BYTES = 100_000
"""Arguments travel as one exec argv element (exec's stdin cannot be closed on every API
server version); Linux caps one argument at 128 KiB."""

_RUN = (
    'a="$1"; shift; {limits} '
    'printf %s "$a" | exec "$@"'
)
_SWEEP = ["sh", "-c", "kill -9 -1 2>/dev/null; exit 0"]
"""Run after every call: kills every process in the container except its init (the waiter)."""
_DU = ["sh", "-c", f"du -sk {WORK_DIR} 2>/dev/null | cut -f1"]

ApiFactory = Callable[[], tuple[Any, Any]]
"""Returns (CoreV1Api, NetworkingV1Api)."""
StreamFn = Callable[..., Any]
"""``kubernetes.stream.stream``: (api method, name, namespace, command=..., ...) -> WSClient or str."""


def _default_apis() -> tuple[Any, Any]:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api(), client.NetworkingV1Api()


def _default_stream(*args: Any, **kwargs: Any) -> Any:
    from kubernetes.stream import stream

    return stream(*args, **kwargs)


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


class KubernetesBackend:
    """Pods in ``settings.namespace`` labelled with this router's id."""

    name = "kubernetes"

    def __init__(
        self,
        settings: SandboxSettings,
        apis: ApiFactory | None = None,
        stream_fn: StreamFn | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.core, self.net = (apis or _default_apis)()
        self.stream = stream_fn or _default_stream
        self.sleep = sleep

    def check(self, cls: ProgramClassConfig) -> None:
        if cls.sandbox is None or cls.sandbox.image is None:
            raise SandboxUnavailable(
                f"class {cls.name}: the kubernetes sandbox backend needs sandbox.image (sandbox.command is local)"
            )
        if cls.owner is not None and cls.owner.namespace != self.namespace:
            raise SandboxUnavailable(
                f"class {cls.name} belongs to namespace {cls.owner.namespace}; this router's sandboxes live in "
                f"{self.namespace}"
            )

    def create(self, sandbox_id: str, cls: ProgramClassConfig, program_id: str | None) -> Sandbox:
        self.check(cls)
        where = (self.settings.router_id, self.namespace, self.settings.router_group)
        sandbox = Sandbox(sandbox_id, cls.name, program_id, pod_name(sandbox_id), None, time.time())
        try:
            self.net.create_namespaced_network_policy(
                self.namespace, sandbox_network_policy(sandbox_id, cls, program_id, *where)
            )
            self.core.create_namespaced_pod(self.namespace, sandbox_pod(sandbox_id, cls, program_id, *where))
            self._wait_running(sandbox.location)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.destroy(sandbox)
            if isinstance(exc, SandboxError):
                raise
            if isinstance(exc, Exception):
                raise SandboxError(f"could not start a sandbox pod for class {cls.name}: {exc}") from None
            raise
        return sandbox

    def _wait_running(self, name: str) -> None:
        deadline = time.monotonic() + self.settings.prepare_timeout_s
        while True:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            phase = _get(pod, "status", "phase")
            if phase == "Running":
                return
            if phase in ("Failed", "Succeeded"):
                reason = _get(pod, "status", "reason") or _get(pod, "status", "message") or phase
                raise SandboxError(f"sandbox pod {name} ended before it was used: {reason}")
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"sandbox pod {name} not running after {self.settings.prepare_timeout_s:g} s (phase {phase})"
                )
            self.sleep(self.settings.pod_start_poll_s)

    def assign(self, sandbox: Sandbox, program_id: str) -> Sandbox:
        patch = {"metadata": {"labels": {PROGRAM_LABEL: program_label(program_id)},
                              "annotations": {PROGRAM_ANNOTATION: program_id}}}  # fmt: skip
        self.core.patch_namespaced_pod(sandbox.location, self.namespace, patch)
        return replace(sandbox, program_id=program_id)

    def run(self, sandbox: Sandbox, cls: ProgramClassConfig, call: ToolCall) -> ToolResult:
        if cls.sandbox is not None and cls.sandbox.network == "none":
            self._require_policy(sandbox)
        if len(call.stdin) > MAX_ARGUMENT_BYTES:
            raise SandboxError(f"tool arguments of {len(call.stdin)} bytes exceed {MAX_ARGUMENT_BYTES} bytes")
        command = ["sh", "-c", _RUN.format(limits=self._ulimits(cls)), "shoal-tool",
                   call.stdin.decode("utf-8", "replace"), *call.tool.command]  # fmt: skip
        began = time.monotonic()
        ws = self.stream(
            self.core.connect_get_namespaced_pod_exec, sandbox.location, self.namespace, command=command,
            stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False,
        )  # fmt: skip
        out, err = bytearray(), bytearray()
        flags = {"out": False, "err": False}
        deadline = began + call.timeout_s
        timed_out = False

        def take(buf: bytearray, key: str, data: str | bytes) -> None:
            raw = data.encode() if isinstance(data, str) else data
            room = call.max_output_bytes - len(buf)
            if len(raw) > room:
                flags[key] = True
            buf += raw[: max(room, 0)]

        try:
            while ws.is_open():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ws.update(timeout=min(remaining, 1.0))
                if ws.peek_stdout():
                    take(out, "out", ws.read_stdout())
                if ws.peek_stderr():
                    take(err, "err", ws.read_stderr())
            exit_code = None if timed_out else ws.returncode
        finally:
            ws.close()
            self._sweep(sandbox)
        return ToolResult(
            out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), flags["out"], flags["err"],
            -9 if timed_out else exit_code, time.monotonic() - began, timed_out,
        )  # fmt: skip

    def _require_policy(self, sandbox: Sandbox) -> None:
        """A ``network: none`` sandbox whose deny-all policy was deleted would have the network: refuse."""
        try:
            self.net.read_namespaced_network_policy(sandbox.location, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                raise SandboxError(
                    f"the deny-all NetworkPolicy of sandbox {sandbox.location} is gone; refusing to run tools in it"
                ) from None
            raise

    @staticmethod
    def _ulimits(cls: ProgramClassConfig) -> str:
        """Shell ``ulimit`` for the class's per-process limits (numbers from validated settings only)."""
        assert cls.sandbox is not None
        res = cls.sandbox.resources
        parts = []
        if res.cpu_seconds is not None:
            parts.append(f"ulimit -t {res.cpu_seconds} || exit 125;")
        if res.max_open_files is not None:
            parts.append(f"ulimit -n {res.max_open_files} || exit 125;")
        if res.max_file_bytes is not None:
            parts.append(f"ulimit -f {max(1, res.max_file_bytes // 512)} || exit 125;")
        return " ".join(parts)

    def _sweep(self, sandbox: Sandbox) -> None:
        try:
            self.stream(
                self.core.connect_get_namespaced_pod_exec, sandbox.location, self.namespace, command=_SWEEP,
                stdin=False, stdout=True, stderr=True, tty=False,
            )  # fmt: skip
        except Exception as exc:  # the pod may be gone already (released meanwhile)
            log.debug("sweep of %s: %s", sandbox.location, exc)

    def usage(self, sandbox: Sandbox) -> Usage:
        try:
            self.core.read_namespaced_pod(sandbox.location, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                return Usage(0, 0, 0)
            raise
        try:
            kib = str(self.stream(
                self.core.connect_get_namespaced_pod_exec, sandbox.location, self.namespace, command=_DU,
                stdin=False, stdout=True, stderr=False, tty=False,
            )).strip()  # fmt: skip
        except Exception:
            kib = ""
        return Usage(1, 0, int(kib) * 1024 if kib.isdigit() else 0)

    def destroy(self, sandbox: Sandbox) -> None:
        for delete in (
            lambda: self.core.delete_namespaced_pod(sandbox.location, self.namespace, grace_period_seconds=0),
            lambda: self.net.delete_namespaced_network_policy(sandbox.location, self.namespace),
        ):
            try:
                delete()
            except Exception as exc:
                if _status(exc) != 404:
                    raise SandboxError(f"could not delete {sandbox.location}: {exc}") from None

    def list_existing(self) -> list[Sandbox]:
        """This router's sandboxes; with a ``routerGroup``, also those of group members whose
        pod is gone (replicas are named after their pods: a replaced replica leaves orphans)."""
        own, group = self.settings.router_id, self.settings.router_group
        selector = f"{SANDBOX_LABEL}=true," + (f"{ROUTER_GROUP_LABEL}={group}" if group else f"{ROUTER_LABEL}={own}")
        alive: dict[str, bool] = {own: True}
        found: dict[str, Sandbox] = {}
        for list_fn in (self.core.list_namespaced_pod, self.net.list_namespaced_network_policy):
            for obj in _get(list_fn(self.namespace, label_selector=selector), "items") or []:
                meta = _get(obj, "metadata")
                obj_labels = _get(meta, "labels") or {}
                # Filtered here too: a selector is a request, not a guarantee (and emulators ignore it).
                if obj_labels.get(SANDBOX_LABEL) != "true":
                    continue
                router = obj_labels.get(ROUTER_LABEL) or ""
                if router != own and (group is None or obj_labels.get(ROUTER_GROUP_LABEL) != group):
                    continue
                if router not in alive:
                    alive[router] = self._pod_exists(router)
                if router != own and alive[router]:
                    continue  # a live replica's sandbox
                sid = obj_labels.get(SANDBOX_ID_LABEL) or ""
                program = (_get(meta, "annotations") or {}).get(PROGRAM_ANNOTATION) or None
                found.setdefault(sid, Sandbox(sid, obj_labels.get("shoal.dev/program-class", ""), program,
                                              _get(meta, "name")))  # fmt: skip
        return list(found.values())

    def _pod_exists(self, name: str) -> bool:
        if not name:
            return False
        try:
            self.core.read_namespaced_pod(name, self.namespace)
        except Exception as exc:
            return _status(exc) != 404  # unsure (API trouble): treat it as alive, never remove others' work
        return True
