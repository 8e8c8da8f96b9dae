"""Pool settings: where a pool's engine replicas are and how its prompts are tokenized."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field, TypeAdapter, field_validator, model_validator

from shoal.router.config_base import StrictModel as _Strict
from shoal.router.config_picking import PickingConfig

NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A DNS label (pool names)."""
HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class KubernetesEndpoints(_Strict):
    """Discover a pool's replicas by watching the Kubernetes API (in-cluster or KUBECONFIG)."""

    namespace: str = "default"
    """Namespace to watch."""
    label_selector: str = Field(min_length=1)
    """Label selector, e.g. ``shoal.dev/pool=chat`` (pods) or ``kubernetes.io/service-name=chat`` (slices)."""
    resource: Literal["pods", "endpointslices"] = "pods"
    """Watch ready Pods (their pod IP) or EndpointSlices (ready addresses)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Engine HTTP port on each replica."""
    port_name: str | None = None
    """For EndpointSlices: take the port with this name from the slice instead of ``port``."""
    scheme: Literal["http", "https"] = "http"
    """URL scheme to reach replicas."""


class EndpointsConfig(_Strict):
    """Where a pool's engine replicas are. Exactly one of ``static`` / ``kubernetes``."""

    static: list[str] | None = None
    """Fixed base URLs of engine replicas, e.g. ``http://127.0.0.1:8001`` (no trailing ``/v1``)."""
    kubernetes: KubernetesEndpoints | None = None
    """Discovery by label through the Kubernetes API."""

    @model_validator(mode="after")
    def _exactly_one(self) -> EndpointsConfig:
        if (self.static is None) == (self.kubernetes is None):
            raise ValueError("endpoints needs exactly one of 'static' or 'kubernetes'")
        return self

    @field_validator("static")
    @classmethod
    def _urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        out: list[str] = []
        for url in urls:
            HTTP_URL.validate_python(url)
            clean = url.rstrip("/")
            if clean.endswith("/v1"):
                raise ValueError(f"endpoint URL must be the server root, without /v1: {url}")
            if clean in out:
                raise ValueError(f"duplicate endpoint URL: {url}")
            out.append(clean)
        return out


class TokenizerConfig(_Strict):
    """How the router tokenizes prompts for prefix affinity (it must match the engine exactly)."""

    source: Literal["engine", "file", "none"] = "engine"
    """``engine``: fetch ``GET /shoal/tokenizer`` from a replica (default; cannot drift).
    ``file``: a saved copy of that payload (JSON) at ``path``. ``none``: do not tokenize;
    approximate prefix affinity then hashes the prompt text in fixed-size chunks instead."""
    path: str | None = None
    """JSON file holding a ``/shoal/tokenizer`` payload (``source: file``)."""

    @model_validator(mode="after")
    def _path(self) -> TokenizerConfig:
        if (self.source == "file") != (self.path is not None):
            raise ValueError("tokenizer.path is required with source 'file' and only then")
        return self



class ColdStartConfig(_Strict):
    """Hold requests while the pool has no ready engine (it scales from zero) instead of 503 at once."""

    max_waiting: int = Field(default=256, ge=1, le=100_000)
    """Requests held at once; more get 503 + Retry-After at once."""
    timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """How long a request is held before it gets 503 + Retry-After."""


class PoolSettings(_Strict):
    """A pool's own settings: what a deployer chooses (the Router custom resource's ``pools[]``)."""

    name: str = Field(pattern=NAME, max_length=63)
    """DNS-label name, unique among pools (in Kubernetes: the ModelPool's name)."""
    aliases: list[str] = Field(default_factory=list)
    """Extra names clients may ask for; requests are forwarded as ``models[0]``."""
    tokenizer: TokenizerConfig = Field(default_factory=lambda: TokenizerConfig())
    """How prompts are tokenized for prefix affinity."""
    picking: PickingConfig | None = None
    """Overrides the router-wide ``picking`` for this pool."""


class PoolConfig(PoolSettings):
    """A set of interchangeable engine replicas serving the same model(s): the pool's settings
    plus where its replicas are and what they serve (the operator fills these in)."""

    models: list[str] = Field(min_length=1)
    """Served model names the engines answer to; the first is the one requests are rewritten to."""
    endpoints: EndpointsConfig
    """Where the replicas are."""
    cold_start: ColdStartConfig | None = None
    """The pool may scale to zero: hold its requests while no engine is ready (see
    router/cold_start.py). Empty: no ready engine means 503 at once."""
