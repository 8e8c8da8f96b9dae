"""What ``shoal up`` runs for a set of manifests: processes, their ports and config files (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shoal.crds import ModelPoolSpec, parse_model_uri
from shoal.crds.modelpool import Autoscaling
from shoal.operator.builders.engine_args import ENGINE_API_KEY_ENV, engine_args
from shoal.operator.builders.modelpool import desired_replicas
from shoal.operator.builders.program_class import program_class
from shoal.operator.builders.router_config import CLASSES_KEY, UPSTREAM_KEY_ENV, render
from shoal.operator.manifests import LocalStack
from shoal.operator.scale_to_zero import DEMAND_PATH

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ProcessSpec:
    """One local process: an engine replica or a router."""

    name: str
    """``engine/<pool>-<i>`` or ``router/<name>``."""
    argv: tuple[str, ...]
    port: int
    log: Path
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment (secrets stay off the command line)."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"


@dataclass(frozen=True)
class OnDemandPool:
    """A minReplicas-0 pool: its engines start when a router holds a request for it, and stop
    after ``autoscaling.scaleToZeroAfterSeconds`` without requests."""

    name: str
    processes: tuple[ProcessSpec, ...]
    autoscaling: Autoscaling
    demand_urls: tuple[str, ...]
    """``/shoal/demand`` of every router serving the pool."""


@dataclass(frozen=True)
class Plan:
    """Processes in start order (engines, then routers), files to write first, and what to tell the user."""

    processes: tuple[ProcessSpec, ...]
    files: dict[Path, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    """Router name (or pool name without a router) -> OpenAI base URL."""
    api_keys: dict[str, str] = field(default_factory=dict)
    """Router name -> one accepted API key (for the demo request)."""
    models: dict[str, str] = field(default_factory=dict)
    """Router name (or pool name) -> a model name it serves."""
    notes: tuple[str, ...] = ()
    on_demand: tuple[OnDemandPool, ...] = ()
    """Pools whose engines are not in ``processes``: started and stopped on demand."""


def local_model(uri: str) -> str:
    """The ``--model`` value for this machine."""
    src = parse_model_uri(uri)
    return f"bundled:{src.location}" if src.scheme == "bundled" else src.location


def engine_key(stack: LocalStack, pool: ModelPoolSpec) -> str | None:
    """The engine API key of a pool (from its Secret in the manifests), or None for keyless engines."""
    if pool.engine.auth is None:
        return None
    ref = pool.engine.auth.api_key_secret_ref
    return stack.secrets[ref.name][ref.key]


def plan_stack(
    stack: LocalStack,
    state_dir: Path,
    ports: Iterator[int],
    *,
    python: str,
    router_port: int | None = None,
    engine_module: str = "shoal.engine",
) -> Plan:
    """Engine replicas on free ports, then each router with static endpoints to them."""
    processes: list[ProcessSpec] = []
    replicas: dict[str, list[str]] = {}
    notes: list[str] = []
    logs = state_dir / "logs"
    routed = {ref.name for router in stack.routers.values() for ref in router.pools}
    lazy: dict[str, list[ProcessSpec]] = {}
    for name, pool in stack.pools.items():
        count = desired_replicas(pool)
        if pool.autoscaling is not None and pool.autoscaling.min_replicas == 0 and name in routed:
            count = max(1, count)
            lazy[name] = []
            notes.append(f"ModelPool {name}: minReplicas 0: {count} replica(s) start on the first request "
                         f"and stop after {pool.autoscaling.idle_seconds}s without requests")  # fmt: skip
        elif pool.autoscaling is not None and pool.autoscaling.min_replicas == 0:
            count = max(1, count)
            notes.append(f"ModelPool {name}: minReplicas 0 needs a Router in front (it holds requests while "
                         f"the engine starts); running {count} replica(s)")  # fmt: skip
        elif pool.autoscaling is not None:
            notes.append(f"ModelPool {name}: autoscaling is not emulated locally; running {count} replica(s)")
        replicas[name] = []
        for i in range(count):
            port = next(ports)
            args = engine_args(pool, local_model(pool.model.uri), host=HOST, port=port)
            key = engine_key(stack, pool)
            env = ((ENGINE_API_KEY_ENV, key),) if key is not None else ()
            argv = (python, "-m", engine_module, *args)
            spec = ProcessSpec(f"engine/{name}-{i}", argv, port, logs / f"{name}-{i}.log", env)
            lazy.get(name, processes).append(spec)
            replicas[name].append(spec.url)

    files: dict[Path, str] = {}
    endpoints: dict[str, str] = {}
    api_keys: dict[str, str] = {}
    models: dict[str, str] = {}
    demand_urls: dict[str, tuple[str, ...]] = {}
    for index, (name, router) in enumerate(stack.routers.items()):
        port = router_port if index == 0 and router_port else next(ports)
        folder = state_dir / "routers" / name
        keys_dir: str | None = None
        if router.auth is not None:
            secret = stack.secrets[router.auth.api_keys_secret.name]
            keys_dir = str(folder / "api-keys")
            files.update({folder / "api-keys" / key: value + "\n" for key, value in secret.items()})
            api_keys[name] = next(iter(secret.values()))
        classes = [program_class(n, p) for n, p in stack.programs.items() if p.router == name]
        pools = {ref.name: stack.pools.get(ref.name) for ref in router.pools}
        rendered = render(
            router, pools, classes, lambda pool: {"static": replicas[pool]},
            host=HOST, port=port, api_keys_path=keys_dir, classes_file=str(folder / CLASSES_KEY),
        )  # fmt: skip
        files[folder / "router.yaml"] = rendered.router_yaml
        files[folder / CLASSES_KEY] = rendered.classes_yaml
        upstream = rendered.upstream_key
        # The local sandbox backend keeps its directories (and finds its orphans) under the state dir.
        router_env: tuple[tuple[str, str], ...] = (("SHOAL_STATE_DIR", str(folder)),)
        if upstream is not None:
            router_env += ((UPSTREAM_KEY_ENV, stack.secrets[upstream.name][upstream.key]),)
        processes.append(
            ProcessSpec(
                f"router/{name}",
                (python, "-m", "shoal.router", "--config", str(folder / "router.yaml")),
                port,
                logs / f"router-{name}.log",
                router_env,
            )
        )
        endpoints[name] = f"http://{HOST}:{port}/v1"
        demand_urls.update({ref.name: (*demand_urls.get(ref.name, ()), f"http://{HOST}:{port}{DEMAND_PATH}")
                            for ref in router.pools})  # fmt: skip
        first = stack.pools[router.pools[0].name]
        models[name] = first.model.served_model_name
    if not stack.routers:
        for name, urls in replicas.items():
            if urls:
                endpoints[name] = f"{urls[0]}/v1"
                models[name] = stack.pools[name].model.served_model_name
    on_demand = tuple(
        OnDemandPool(name, tuple(specs), autoscaling, demand_urls[name])
        for name, specs in lazy.items()
        if (autoscaling := stack.pools[name].autoscaling) is not None
    )
    return Plan(tuple(processes), files, endpoints, api_keys, models, tuple(notes), on_demand)
