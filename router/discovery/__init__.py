"""Endpoint discovery: where a pool's engine replicas are (a static list, or Kubernetes)."""

from __future__ import annotations

from shoal.router.config import EndpointsConfig
from shoal.router.discovery.base import EndpointSource
from shoal.router.discovery.static import StaticSource

__all__ = ["EndpointSource", "StaticSource", "make_source"]


def make_source(cfg: EndpointsConfig) -> EndpointSource:
    """The source a pool's ``endpoints`` config describes."""
    if cfg.static is not None:
        return StaticSource(cfg.static)
    assert cfg.kubernetes is not None
    # Imported lazily: the kubernetes client is heavy and only needed in-cluster.
    from shoal.router.discovery.kubernetes import KubernetesSource

    return KubernetesSource(cfg.kubernetes)
