"""The other replicas of this router (program ownership)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shoal.router.config_base import StrictModel as _Strict
from shoal.router.config_pools import HTTP_URL, EndpointsConfig, KubernetesEndpoints


class PeerSettings(_Strict):
    """How the replicas of a router watch each other (the Router custom resource's ``peers``)."""

    health_interval_s: float = Field(default=1.0, gt=0)
    """How often each other replica's ``/health`` is probed (any answer means alive)."""
    down_after_failures: int = Field(default=2, ge=1)
    """Failed probes in a row after which a replica counts as dead (a failed forward counts at once)."""
    probe_timeout_s: float = Field(default=1.0, gt=0)
    """Timeout of one ``/health`` probe (a busy replica must not look dead)."""


class PeersConfig(PeerSettings):
    """The other replicas of this router (``Router.spec.replicas`` > 1). Each agent program is
    owned by one replica, chosen by rendezvous hashing of its id over the live replicas; the
    others forward that program's requests to it. Unset: this router owns every program."""

    self_url: str | None = Field(default=None, alias="self")
    """This replica's URL as the others reach it, e.g. ``http://10.0.0.5:8080``. With
    ``kubernetes`` discovery it defaults to ``http://$POD_IP:<kubernetes.port>`` (downward API)."""
    static: list[str] | None = None
    """Base URLs of every replica (this one may be listed too)."""
    kubernetes: KubernetesEndpoints | None = None
    """Discover the replicas as this Router's own ready pods by label (``port``: the router's)."""

    @model_validator(mode="after")
    def _check(self) -> PeersConfig:
        if (self.static is None) == (self.kubernetes is None):
            raise ValueError("peers needs exactly one of 'static' or 'kubernetes'")
        self.discovery()  # URLs well-formed, no duplicates
        if self.self_url is not None:
            HTTP_URL.validate_python(self.self_url)
        elif self.static is not None:
            raise ValueError("peers.self is required with peers.static (this replica's URL)")
        return self

    def discovery(self) -> EndpointsConfig:
        """The replicas as an endpoint source description (``shoal.router.discovery.make_source``)."""
        return EndpointsConfig(static=self.static, kubernetes=self.kubernetes)
