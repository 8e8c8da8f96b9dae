"""How the router runs sandboxes (``sandboxes:`` settings; the classes say what runs in them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shoal.router.config_base import StrictModel


class SandboxSettings(StrictModel):
    """The sandbox manager and its backend."""

    backend: Literal["local", "kubernetes"] = "local"
    """``local``: a process tree per tool call on this machine; ``kubernetes``: one pod per sandbox."""
    router_id: str = Field(default="router", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    """Names this router's sandboxes (state directory, pod label): a restarted router removes
    only its own orphans."""
    max_concurrent_preparations: int = Field(default=4, ge=1, le=1000)
    """Sandboxes prepared at once for pre-warm and warm-pool refills (a program's own first
    tool call never waits behind this cap)."""
    prepare_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """Longest a sandbox's preparation (``sandbox.command`` or the pod start) may take."""
    gc_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """How often sandboxes idle past their class's ``ttlSeconds`` are removed."""
    max_sandboxes: int = Field(default=1000, ge=1, le=100_000)
    """Sandboxes alive at once (warm pool included); past it a tool call gets 503."""
    worker_threads: int = Field(default=64, ge=2, le=4096)
    """Threads for blocking sandbox work; a tool call holds one for its whole run, so this
    bounds the tool calls running at once (more wait for a thread)."""
    state_dir: str | None = None
    """Local backend: where sandbox directories and their records live; default
    ``$SHOAL_STATE_DIR/sandboxes`` or ``/tmp/shoal-sandboxes``. Holds ``<routerId>/``."""
    hidden_paths: list[str] = Field(default_factory=list)
    """Local backend, as root: directories a tool must not see (an empty tmpfs covers each in
    the call's mount namespace); ``$SHOAL_STATE_DIR`` (the router's configs and keys) always is."""
    uid_base: int = Field(default=1_100_000, ge=1000, le=2**31 - 200_000)
    """Local backend, router running as root: first uid of the range sandboxes run as (one
    uid per sandbox, owning only its directory)."""
    uid_count: int = Field(default=10_000, ge=1, le=100_000)
    """Size of that uid range (an upper bound on local sandboxes alive on the machine)."""
    namespace: str = Field(default="default", min_length=1)
    """Kubernetes backend: namespace of the sandbox pods (the AgentPrograms' namespace)."""
    router_group: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    """Kubernetes backend, several router replicas whose ``routerId`` is their pod name: the
    Router they belong to. A replica starting up also removes the sandboxes of group members
    whose pod no longer exists (a replaced replica would leave them until the AgentProgram goes)."""
    pod_start_poll_s: float = Field(default=0.5, gt=0, le=60)
    """Kubernetes backend: how often a starting pod's phase is read."""

