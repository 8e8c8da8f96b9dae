"""AgentProgram -> router program class, the live classes ConfigMap, and the router's sandbox RBAC."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shoal.crds import AgentProgramSpec, ModelPoolSpec, Reason, RouterSpec
from shoal.crds.router import ProgramScheduling
from shoal.operator.builders.common import ANNOTATION_CONFIG_HASH, Images, Owner
from shoal.operator.builders.program_class import (
    ClassError,
    classes_yaml,
    cluster_problem,
    local_problem,
    owner_ref,
    program_class,
)
from shoal.operator.builders.router import DISCOVERY_RULES, SANDBOX_RULES, router_children
from shoal.operator.builders.router_config import kubernetes_endpoints, render
from shoal.router.config import RouterConfig
from shoal.router.programs.config import OwnerRef, ProgramsConfig, load_classes_file

REPO = Path(__file__).resolve().parents[2]
OWNER = Owner("Router", "front", "team", "uid-router")
POOLS = {"chat": ModelPoolSpec.model_validate({"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol"}})}
ROUTER = RouterSpec.model_validate({"pools": [{"name": "chat"}]})
BODY = {"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram",
        "metadata": {"name": "coder", "namespace": "team", "uid": "uid-coder"}}  # fmt: skip


def program(**spec: Any) -> AgentProgramSpec:
    return AgentProgramSpec.model_validate({"router": "front", "model": "smol", **spec})


IMAGE_SANDBOX = {
    "image": "python:3.12-slim",
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                  "limits": {"cpu": 1, "memory": "512Mi", "ephemeral-storage": "2Gi"}},
    "network": "egress",
    "warmPoolSize": 2,
    "ttlSeconds": 120,
}  # fmt: skip
TOOLS = [{"name": "run_python", "description": "run it", "command": ["python3", "-c", "x"],
          "timeoutSeconds": 5, "maxOutputBytes": 4096}]  # fmt: skip


def test_every_agentprogram_field_reaches_the_class() -> None:
    spec = program(
        priority=80,
        limits={"maxConcurrentPrograms": 3, "maxContextTokens": 4096, "leaseSeconds": 90},
        sandbox=IMAGE_SANDBOX,
        tools=TOOLS,
    )
    cls = program_class("coder", spec, owner_ref(BODY))
    assert (cls.name, cls.model, cls.priority) == ("coder", "smol", 80)
    assert (cls.max_concurrent_programs, cls.max_context_tokens, cls.lease_seconds) == (3, 4096, 90.0)
    assert cls.owner == OwnerRef(name="coder", uid="uid-coder", namespace="team")
    sandbox = cls.sandbox
    assert sandbox is not None and sandbox.image == "python:3.12-slim" and sandbox.command is None
    assert (sandbox.network, sandbox.warm_pool_size, sandbox.ttl_seconds) == ("egress", 2, 120)
    assert sandbox.resources.kubernetes == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "2Gi"},
    }
    assert sandbox.resources.memory_bytes == 512 << 20
    assert sandbox.resources.disk_bytes == 2 << 30
    [tool] = cls.tools
    assert (tool.name, tool.description, tool.command) == ("run_python", "run it", ["python3", "-c", "x"])
    assert (tool.timeout_s, tool.max_output_bytes) == (5.0, 4096)
    # The file the router loads round-trips to the same class.
    path = REPO / ".pytest-classes.yaml"
    try:
        path.write_text(classes_yaml([cls]))
        assert load_classes_file(path) == [cls]
    finally:
        path.unlink(missing_ok=True)


def test_defaults_and_no_sandbox() -> None:
    cls = program_class("plain", program())
    assert cls.sandbox is None and cls.tools == [] and cls.owner is None
    assert (cls.priority, cls.max_concurrent_programs, cls.lease_seconds) == (50, 8, 600.0)


@pytest.mark.parametrize(
    ("sandbox", "reason", "text"),
    [
        ({"image": "i", "resources": {"limits": {"memory": "lots"}}}, "ResourcesInvalid", "not a Kubernetes quantity"),
        ({"image": "i", "resources": {"limits": {"memory": "500m"}}}, "ResourcesInvalid", "not a byte quantity"),
        ({"image": "i", "resources": {"limits": {"memory": "512Ki"}}}, "ResourcesInvalid", "at least 1Mi"),
    ],
)
def test_bad_sandbox_resources_are_rejected(sandbox: dict[str, Any], reason: str, text: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        program(sandbox=sandbox)
    assert err.value.errors()[0]["type"] == reason and text in str(err.value)


def test_a_tool_without_a_command_is_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        program(sandbox={"command": ["true"]}, tools=[{"name": "t"}])


def test_class_errors_name_the_field() -> None:
    # The CRD allows 64-character tool names starting with '_'; the router's class allows the same.
    assert program_class("ok", program(sandbox={"command": ["true"]}, tools=[{"name": "_" * 64, "command": ["x"]}]))
    with pytest.raises(ClassError) as err:
        program_class("Not_A_Dns_Label", program())
    assert "name" in str(err.value) and "\n" not in str(err.value)


def test_sandbox_backend_fits_where_it_runs() -> None:
    image = program(sandbox=IMAGE_SANDBOX)
    local = program(sandbox={"command": ["true"], "resources": {"limits": {"memory": "256Mi"}}})
    assert cluster_problem(image) is None and cluster_problem(program()) is None
    assert "sandbox.image" in (cluster_problem(local) or "")
    assert local_problem(local) is None and local_problem(program()) is None
    assert "needs a cluster" in (local_problem(image) or "")
    cpu = program(sandbox={"command": ["true"], "resources": {"limits": {"cpu": "1"}}})
    assert "cpu cannot be enforced locally" in (local_problem(cpu) or "")


def test_classes_live_outside_the_config_hash() -> None:
    def children(*classes: Any) -> list[dict[str, Any]]:
        return router_children(OWNER, ROUTER, render(ROUTER, POOLS, classes, kubernetes_endpoints("team")), Images())

    def digest(kids: list[dict[str, Any]]) -> str:
        dep = next(c for c in kids if c["kind"] == "Deployment")
        return str(dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH])

    none = children()
    one = children(program_class("coder", program(priority=10)))
    changed = children(program_class("coder", program(priority=90)))
    assert digest(none) == digest(one) == digest(changed)
    files = [yaml.safe_load(k[4]["data"]["classes.yaml"]) for k in (none, one, changed)]
    assert files[0] == {"classes": []}
    assert [c["priority"] for c in files[1]["classes"]] == [10] and files[2]["classes"][0]["priority"] == 90
    dep = next(c for c in one if c["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "classes")
    assert "subPath" not in mount  # a subPath mount is never updated in a running pod
    assert {"name": "classes", "configMap": {"name": "front-router-classes"}} in pod["volumes"]
    config = yaml.safe_load(one[3]["data"]["router.yaml"])
    assert config["programs"]["classesFile"] == f"{mount['mountPath']}/classes.yaml"
    for child in one:
        kubernetes_validate.validate(child, "1.32.0", strict=True)


def test_router_programs_settings_reach_router_yaml() -> None:
    spec = RouterSpec.model_validate({
        "pools": [{"name": "chat"}],
        "programs": {"highWatermark": 0.8, "lowWatermark": 0.6, "tickS": 0.25, "maxWaitS": 30,
                     "retentionMaxS": 45, "reloadIntervalS": 1, "retentionDefaultS": 3,
                     "retentionBreakEvenS": 12, "prewarmQueueDepth": 5, "countForeignLoad": True},
    })  # fmt: skip
    config = RouterConfig.model_validate(yaml.safe_load(render(spec, POOLS, [], kubernetes_endpoints("t")).router_yaml))
    p = config.programs
    assert (p.high_watermark, p.low_watermark, p.tick_s, p.max_wait_s, p.retention_max_s) == (0.8, 0.6, 0.25, 30, 45)
    assert (p.reload_interval_s, p.retention_default_s, p.retention_break_even_s, p.prewarm_queue_depth) == (1, 3, 12, 5)
    assert p.count_foreign_load is True


def test_router_programs_are_the_routers_settings_less_what_the_operator_sets() -> None:
    properties = ProgramScheduling.model_json_schema(by_alias=True)["properties"]
    by_operator = {"classes", "classesFile", "forwardedSecretEnv"}
    assert set(properties) == set(ProgramsConfig.model_json_schema(by_alias=True)["properties"]) - by_operator
    assert ProgramScheduling().model_dump() == {k: v for k, v in ProgramsConfig().model_dump().items()
                                                if k not in {"classes", "classes_file", "forwarded_secret_env"}}


@pytest.mark.parametrize(
    "programs", [{"classesFile": "/tmp/c.yaml"}, {"forwardedSecretEnv": "X"}, {"classes": [{"name": "a", "model": "m"}]}]
)
def test_router_programs_fields_the_operator_sets_are_rejected(programs: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        RouterSpec.model_validate({"pools": [{"name": "chat"}], "programs": programs})
    assert err.value.errors()[0]["type"] == Reason.FEATURE_NOT_SUPPORTED.value


def _rbac_md_rules() -> list[dict[str, Any]]:
    text = (REPO / "router" / "sandboxes" / "RBAC.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    rules: list[dict[str, Any]] = yaml.safe_load(block.group(1))["rules"]
    return rules


def test_router_role_grants_sandbox_verbs_only_for_image_sandboxes() -> None:
    def role(*classes: Any) -> dict[str, Any]:
        rendered = render(ROUTER, POOLS, classes, kubernetes_endpoints("team"))
        return next(c for c in router_children(OWNER, ROUTER, rendered, Images()) if c["kind"] == "Role")

    assert role()["rules"] == DISCOVERY_RULES
    assert role(program_class("plain", program()))["rules"] == DISCOVERY_RULES
    local = program_class("local", program(sandbox={"command": ["true"]}))
    assert role(local)["rules"] == DISCOVERY_RULES
    with_pods = role(local, program_class("coder", program(sandbox=IMAGE_SANDBOX)))
    assert with_pods["rules"] == DISCOVERY_RULES + SANDBOX_RULES
    assert with_pods["kind"] == "Role" and with_pods["metadata"]["namespace"] == "team"  # never cluster-wide
    # Exactly what the sandbox backend documents it calls.
    assert _rbac_md_rules() == SANDBOX_RULES
    kubernetes_validate.validate(with_pods, "1.32.0", strict=True)


def test_router_replicas_find_each_other_for_program_ownership() -> None:
    from shoal.operator.builders.router_config import kubernetes_peers

    peers = kubernetes_peers("team", "front")
    for replicas, expected in ((1, False), (2, True)):
        spec = RouterSpec.model_validate({"pools": [{"name": "chat"}], "replicas": replicas})
        rendered = render(spec, POOLS, [], kubernetes_endpoints("team"), peers=peers)
        config = RouterConfig.model_validate(yaml.safe_load(rendered.router_yaml))
        assert (config.peers is not None) == expected
        dep = next(c for c in router_children(OWNER, spec, rendered, Images()) if c["kind"] == "Deployment")
        env = dep["spec"]["template"]["spec"]["containers"][0].get("env", [])
        assert ({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in env) == expected
        assert (config.programs.forwarded_secret_env == "SHOAL_PEER_SECRET") == expected
        secret = {"secretKeyRef": {"name": "front-router-peers", "key": "secret"}}
        assert ({"name": "SHOAL_PEER_SECRET", "valueFrom": secret} in env) == expected
        if config.peers is not None:
            assert config.peers.kubernetes is not None
            assert config.peers.kubernetes.label_selector == "shoal.dev/router=front,app.kubernetes.io/component=router"
            assert config.peers.kubernetes.port == 8080 and config.peers.kubernetes.namespace == "team"


def test_router_pods_run_the_kubernetes_sandbox_backend_whatever_the_classes() -> None:
    import json

    from shoal.operator.builders.router import sandbox_problem
    from shoal.router.sandboxes.service import settings_from_env

    def router_env(spec: RouterSpec, owner: Owner, *classes: Any) -> tuple[dict[str, Any], str | None]:
        rendered = render(spec, POOLS, classes, kubernetes_endpoints("team"))
        dep = next(c for c in router_children(owner, spec, rendered, Images()) if c["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        assert {"name": "state", "emptyDir": {}} in pod["volumes"]  # writable although the root FS is not
        kubernetes_validate.validate(dep, "1.32.0", strict=True)
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
        return env, sandbox_problem(owner, spec, rendered)

    image = program_class("coder", program(sandbox=IMAGE_SANDBOX))
    without, problem = router_env(ROUTER, OWNER)
    assert problem is None and without["SHOAL_STATE_DIR"] == "/var/lib/shoal"
    env, problem = router_env(ROUTER, OWNER, image)
    assert env == without and problem is None  # the classes never change the pod template
    settings = settings_from_env({k: v for k, v in env.items() if isinstance(v, str)})  # what the router reads
    assert (settings.backend, settings.namespace, settings.router_id) == ("kubernetes", "team", "front")
    assert json.loads(env["SHOAL_SANDBOXES"]) == {"backend": "kubernetes", "namespace": "team"}
    # Two replicas: each names its sandboxes after its pod, which must fit a router id.
    two = RouterSpec.model_validate({"pools": [{"name": "chat"}], "replicas": 2})
    env, problem = router_env(two, OWNER, image)
    assert env["SHOAL_ROUTER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}} and problem is None
    long_two = Owner("Router", "a-rather-long-router", "team", "u")
    env, problem = router_env(two, long_two)
    assert problem is None and env["SHOAL_ROUTER_ID"] == "a-rather-long-router"  # no sandbox pods: fine
    _, problem = router_env(two, long_two, image)
    assert problem is not None and "at most 16 characters" in problem
    # One replica: a long name is shortened to a stable, valid id.
    long_owner = Owner("Router", "a-router-with-a-very-long-name-for-testing-ids", "team", "u")
    env, problem = router_env(ROUTER, long_owner, image)
    assert problem is None and len(env["SHOAL_ROUTER_ID"]) <= 40
    assert settings_from_env({"SHOAL_ROUTER_ID": env["SHOAL_ROUTER_ID"]}).router_id == env["SHOAL_ROUTER_ID"]
