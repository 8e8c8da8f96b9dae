"""Table tests of the pure builders: ModelPool/Router specs in, Kubernetes manifests out."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from shoal.crds import ModelPoolSpec, Reason, RouterSpec
from shoal.operator.builders.common import ANNOTATION_CONFIG_HASH, Images, Owner, quantity
from shoal.operator.builders.engine_args import engine_args
from shoal.operator.builders.modelpool import desired_replicas, model_mount, pool_children
from shoal.operator.builders.router import router_children
from shoal.operator.builders.router_config import RenderError, kubernetes_endpoints, render

K8S_VERSION = "1.32.0"
POOL_OWNER = Owner("ModelPool", "chat", "team", "uid-pool")
ROUTER_OWNER = Owner("Router", "front", "team", "uid-router")
BUNDLED = {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol"}


def pool(**spec: Any) -> ModelPoolSpec:
    return ModelPoolSpec.model_validate({"model": BUNDLED, **spec})


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return c


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize(
    ("spec", "expected", "absent"),
    [
        ({}, {"--block-size": "16", "--max-num-seqs": "128", "--device": "cpu", "--dtype": "auto"},
         # KV pool and step budget unset: the engine sizes them from its container.
         ["--no-prefix-caching", "--max-model-len", "--kernels", "--max-waiting", "--kv-cache-memory-gb",
          "--max-num-batched-tokens"]),
        ({"engine": {"blockSize": 32, "maxNumBatchedTokens": 2048, "maxModelLen": 4096, "kvCacheMemoryGb": 0.5}},
         {"--block-size": "32", "--max-num-batched-tokens": "2048", "--max-model-len": "4096",
          "--kv-cache-memory-gb": "0.5"}, []),
        ({"engine": {"prefixCaching": False, "kernels": "triton", "maxWaitingRequests": 64}},
         {"--kernels": "triton", "--max-waiting": "64"}, []),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, {"--device": "cuda"}, ["--speculation"]),
        ({"engine": {"speculation": {}}},
         {"--speculation": "trie", "--spec-max-draft-tokens": "8", "--spec-max-batch-size": "8",
          "--spec-global-trie-nodes": "200000"}, []),
        ({"engine": {"speculation": {"numSpeculativeTokens": 4, "maxBatchSize": 2, "globalTrieNodes": 0}}},
         {"--speculation": "trie", "--spec-max-draft-tokens": "4", "--spec-max-batch-size": "2",
          "--spec-global-trie-nodes": "0"}, []),
        ({"engine": {"dtype": "bfloat16", "device": "cuda"}, "resources": {"limits": {"nvidia.com/gpu": "1"}}},
         {"--dtype": "bfloat16", "--device": "cuda"}, []),
    ],
)  # fmt: skip
def test_engine_args(spec: dict[str, Any], expected: dict[str, str], absent: list[str]) -> None:
    args = engine_args(pool(**spec), "bundled:smollm2-135m-instruct", host="0.0.0.0", port=8000)
    assert args[:3] == ["serve", "--model", "bundled:smollm2-135m-instruct"]
    assert flag(args, "--served-model-name") == "smol"
    for name, value in expected.items():
        assert flag(args, name) == value, name
    for name in absent:
        assert name not in args
    assert ("--no-prefix-caching" in args) == (spec.get("engine", {}).get("prefixCaching") is False)


@pytest.mark.parametrize(
    ("uri", "model_arg", "volume", "mount_path", "download"),
    [
        ("bundled:smollm2-135m-instruct", "bundled:smollm2-135m-instruct", None, None, None),
        ("file:///opt/models/qwen", "/opt/models/qwen", None, None, None),
        ("hostpath:///data/m/q.gguf", "/models/q.gguf", {"hostPath": {"path": "/data/m/q.gguf", "type": "File"}},
         "/models/q.gguf", None),
        ("hostpath:///data/qwen", "/models/qwen", {"hostPath": {"path": "/data/qwen", "type": "Directory"}},
         "/models/qwen", None),
        ("pvc://weights/llama/3b", "/models/llama/3b",
         {"persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}, "/models", None),
        ("https://example.com/x/m.gguf", "/models/m.gguf", {"emptyDir": {}}, "/models",
         "https://example.com/x/m.gguf"),
    ],
)  # fmt: skip
def test_model_sources(uri: str, model_arg: str, volume: Any, mount_path: Any, download: Any) -> None:
    spec = ModelPoolSpec.model_validate({"model": {"uri": uri, "servedModelName": "m"}})
    m = model_mount(uri)
    assert m.model_arg == model_arg
    assert m.download_url == download
    dep = pool_children(POOL_OWNER, spec, Images(), keda=False)[0]
    pod = dep["spec"]["template"]["spec"]
    assert flag(container(dep)["args"], "--model") == model_arg
    if volume is None:
        assert [v["name"] for v in pod["volumes"]] == ["tmp", "cache"]
    else:
        model_volume = next(v for v in pod["volumes"] if v["name"] == "model")
        assert {k: v for k, v in model_volume.items() if k != "name"} == volume
        assert {"name": "model", "mountPath": mount_path, "readOnly": True} in container(dep)["volumeMounts"]
    assert ("initContainers" in pod) == (download is not None)


def test_deployment_shape() -> None:
    spec = pool(
        replicas=3,
        resources={"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        image="registry.local/engine:dev",
    )
    dep = pool_children(POOL_OWNER, spec, Images(), keda=False)[0]
    c = container(dep)
    tpl = dep["spec"]["template"]
    assert dep["metadata"]["name"] == "chat-engine"
    assert dep["metadata"]["namespace"] == "team"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {"shoal.dev/pool": "chat", "app.kubernetes.io/component": "engine"}
    assert dep["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
    assert tpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert tpl["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert c["image"] == "registry.local/engine:dev"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert any(v["name"] == "dshm" for v in tpl["spec"]["volumes"])
    assert tpl["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert tpl["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_cpu_pool_surges_and_has_no_shm() -> None:
    dep = pool_children(POOL_OWNER, pool(), Images(), keda=False)[0]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert container(dep)["image"] == Images().engine
    assert "dshm" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


@pytest.mark.parametrize(
    ("spec", "keda", "kinds", "replicas"),
    [
        ({}, False, ["Deployment", "ServiceAccount", "Service", "PodDisruptionBudget"], 1),
        ({"replicas": 0}, False, ["Deployment", "ServiceAccount", "Service", "PodDisruptionBudget"], 0),
        ({"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, False,
         ["Deployment", "ServiceAccount", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"], 2),
        ({"replicas": 9, "autoscaling": {"maxReplicas": 5}}, True,
         ["Deployment", "ServiceAccount", "Service", "PodDisruptionBudget", "ScaledObject"], 5),
    ],
)  # fmt: skip
def test_pool_children(spec: dict[str, Any], keda: bool, kinds: list[str], replicas: int) -> None:
    s = pool(**spec)
    children = pool_children(POOL_OWNER, s, Images(), keda=keda)
    assert [c["kind"] for c in children] == kinds
    assert desired_replicas(s) == replicas == children[0]["spec"]["replicas"]
    for child in children:
        ref = child["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "name": "chat", "uid": "uid-pool",
                       "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "shoal-operator"
        if child["kind"] != "ScaledObject":
            kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_autoscalers_target_the_pool_scale_subresource() -> None:
    s = pool(autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetWaitingRequests": 2.5})
    hpa = pool_children(POOL_OWNER, s, Images(), keda=False)[-1]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "name": "chat"}
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "vllm:num_requests_waiting"
    assert metric["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    so = pool_children(POOL_OWNER, s, Images(), keda=True)[-1]
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert 'vllm:num_requests_waiting{namespace="team",pod=~"chat-engine-.*"}' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "2.5"


@pytest.mark.parametrize(("value", "text"), [(4, "4"), (4.0, "4"), (0.5, "500m"), (2.25, "2250m")])
def test_quantity(value: float, text: str) -> None:
    assert quantity(value) == text


def router_spec(**spec: Any) -> RouterSpec:
    return RouterSpec.model_validate({"pools": [{"name": "chat"}], **spec})


POOLS = {"chat": pool(), "big": ModelPoolSpec.model_validate({"model": {"uri": "pvc://w/q", "servedModelName": "q"}})}


def test_router_children_and_config_hash() -> None:
    spec = router_spec(auth={"apiKeysSecret": {"name": "keys"}}, service={"type": "LoadBalancer", "port": 443})
    rendered = render(spec, POOLS, [], kubernetes_endpoints("team"))
    children = router_children(ROUTER_OWNER, spec, rendered, Images())
    kinds = [c["kind"] for c in children]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap", "Deployment", "Service"]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-router"
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)
    cm, classes, dep, svc = children[3], children[4], children[5], children[6]
    assert set(cm["data"]) == {"router.yaml"}
    assert classes["metadata"]["name"] == "front-router-classes" and set(classes["data"]) == {"classes.yaml"}
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["port"] == 443
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "front-router"
    assert {"name": "api-keys", "secret": {"secretName": "keys"}} in pod["volumes"]
    assert children[1]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list"]},
    ]
    digest = dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
    # Same inputs, same hash; a config change gives a new hash (and so a rollout).
    again = router_children(ROUTER_OWNER, spec, render(spec, POOLS, [], kubernetes_endpoints("team")), Images())
    assert again[5]["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] == digest
    changed = router_spec(auth={"apiKeysSecret": {"name": "keys"}}, logLevel="debug")
    other = router_children(ROUTER_OWNER, changed, render(changed, POOLS, [], kubernetes_endpoints("team")), Images())
    assert other[5]["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] != digest


def test_router_config_renders_pools_routes_and_limits() -> None:
    import yaml

    spec = router_spec(
        pools=[{"name": "chat", "aliases": ["small"]}, {"name": "big"}],
        routes=[{"model": "auto", "pool": "chat", "rules": [{"keywords": ["proof"], "pool": "big"}]}],
        picking={"scorers": [{"type": "queue-depth", "weight": 2}], "prefix": {"mode": "precise"}},
        rateLimits={"default": {"requestsPerSecond": 5, "burst": 10}},
    )
    config = yaml.safe_load(render(spec, POOLS, [], kubernetes_endpoints("team")).router_yaml)
    chat = config["pools"][0]
    assert chat["models"] == ["smol"] and chat["aliases"] == ["small"]
    assert chat["endpoints"]["kubernetes"]["labelSelector"] == "shoal.dev/pool=chat,app.kubernetes.io/component=engine"
    assert chat["endpoints"]["kubernetes"]["namespace"] == "team"
    assert config["routes"][0]["rules"][0]["pool"] == "big"
    assert config["picking"]["scorers"] == [{"type": "queue-depth", "weight": 2.0, "params": {}}]
    assert config["picking"]["prefix"]["mode"] == "precise"
    assert config["rateLimits"]["default"]["burst"] == 10
    assert config["listen"] == {"host": "0.0.0.0", "port": 8080}


@pytest.mark.parametrize(
    ("spec", "pools", "reason"),
    [
        ({"pools": [{"name": "chat"}, {"name": "gone"}]}, POOLS, Reason.POOL_NOT_FOUND),
        ({"pools": [{"name": "chat"}, {"name": "twin"}]}, {**POOLS, "twin": pool()}, Reason.CONFIG_INVALID),
    ],
)  # fmt: skip
def test_router_config_errors(spec: dict[str, Any], pools: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RenderError) as err:
        render(RouterSpec.model_validate(spec), pools, [], kubernetes_endpoints("team"))
    assert err.value.reason == reason


def test_static_endpoints_for_the_local_runtime() -> None:
    import yaml

    def static(name: str) -> dict[str, Any]:
        return {"static": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}

    text = render(router_spec(), POOLS, [], static, host="127.0.0.1", port=9000).router_yaml
    config = yaml.safe_load(text)
    assert config["pools"][0]["endpoints"] == {"static": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
    assert config["listen"] == {"host": "127.0.0.1", "port": 9000}


def test_drain_pre_stop_and_grace_period_match_the_drain_timeout() -> None:
    from shoal.operator.builders.common import PRE_STOP_SECONDS

    for drain in (30, 120):
        dep = pool_children(POOL_OWNER, pool(engine={"drainTimeoutSeconds": drain}), Images(), keda=False)[0]
        c, pod = container(dep), dep["spec"]["template"]["spec"]
        assert flag(c["args"], "--drain-timeout") == str(drain)
        # SIGTERM comes after the preStop pause; the engine then drains for `drain` seconds and exits.
        assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + drain
        assert pod["terminationGracePeriodSeconds"] <= PRE_STOP_SECONDS + drain + 10
        assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "python"
        assert f"sleep({PRE_STOP_SECONDS})" in c["lifecycle"]["preStop"]["exec"]["command"][-1]
        assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    spec = router_spec()
    dep = router_children(ROUTER_OWNER, spec, render(spec, POOLS, [], kubernetes_endpoints("team")), Images())[5]
    assert "preStop" in container(dep)["lifecycle"]
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS


def test_engine_api_key_reaches_engines_and_the_router_as_its_upstream_credential() -> None:
    import yaml

    auth = {"auth": {"apiKeySecretRef": {"name": "engine-key", "key": "token"}}}
    secured = pool(engine=auth)
    dep = pool_children(POOL_OWNER, secured, Images(), keda=False)[0]
    env = container(dep)["env"]
    assert {"name": "SHOAL_API_KEY", "valueFrom": {"secretKeyRef": {"name": "engine-key", "key": "token"}}} in env
    assert not any("engine-key" in a or a == "token" for a in container(dep)["args"])  # never on the command line

    spec = router_spec()
    rendered = render(spec, {"chat": secured}, [], kubernetes_endpoints("team"))
    assert yaml.safe_load(rendered.router_yaml)["upstream"] == {"apiKeyEnv": "SHOAL_UPSTREAM_API_KEY"}
    router_dep = router_children(ROUTER_OWNER, spec, rendered, Images())[5]
    upstream = {"name": "SHOAL_UPSTREAM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "engine-key", "key": "token"}}}
    assert upstream in container(router_dep)["env"]
    kubernetes_validate.validate(router_dep, K8S_VERSION, strict=True)
    # Keyless pools: no upstream credential at all.
    plain = render(spec, POOLS, [], kubernetes_endpoints("team"))
    assert "apiKeyEnv" not in str(yaml.safe_load(plain.router_yaml).get("upstream"))
    plain_env = container(router_children(ROUTER_OWNER, spec, plain, Images())[5])["env"]
    assert "SHOAL_UPSTREAM_API_KEY" not in {e["name"] for e in plain_env}
    # One router has one upstream credential: pools with different keys are refused.
    other = pool(engine={"auth": {"apiKeySecretRef": {"name": "other-key"}}})
    two = router_spec(pools=[{"name": "chat"}, {"name": "big"}])
    with pytest.raises(RenderError) as err:
        render(two, {"chat": secured, "big": other}, [], kubernetes_endpoints("team"))
    assert err.value.reason == Reason.CONFIG_INVALID and "engine API keys" in err.value.message
