"""Pure builders of the Kubernetes sandbox's Pod and NetworkPolicy."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.kubernetes_manifests import program_label, sandbox_network_policy, sandbox_pod


def image_class(network: str = "none", **resources: Any) -> ProgramClassConfig:
    return ProgramClassConfig.model_validate({
        "name": "coder", "model": "m",
        "sandbox": {"image": "python:3.12-slim", "network": network, "resources": resources},
        "tools": [{"name": "sh", "command": ["sh", "-c", "cat"]}],
        "owner": {"name": "coder", "uid": "uid-123", "namespace": "team"},
    })  # fmt: skip


def test_pod_is_labelled_owned_and_restricted() -> None:
    cls = image_class(memoryBytes=512 << 20, diskBytes=1 << 30, kubernetes={"requests": {"cpu": "250m"}})
    pod = sandbox_pod("sb-1", cls, "prog-1", "r1", "team")
    meta = pod["metadata"]
    assert meta["name"] == "shoal-sb-1" and meta["namespace"] == "team"
    assert meta["labels"] == {"shoal.dev/sandbox": "true", "shoal.dev/sandbox-id": "sb-1",
                              "shoal.dev/program-class": "coder", "shoal.dev/program": "prog-1",
                              "shoal.dev/router": "r1"}  # fmt: skip
    assert meta["ownerReferences"] == [{"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "name": "coder",
                                        "uid": "uid-123", "controller": True, "blockOwnerDeletion": False}]  # fmt: skip
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert container["image"] == "python:3.12-slim"
    assert container["resources"] == {"requests": {"cpu": "250m"},
                                      "limits": {"memory": str(512 << 20), "ephemeral-storage": str(1 << 30)}}  # fmt: skip
    assert spec["volumes"] == [{"name": "work", "emptyDir": {"sizeLimit": str(1 << 30)}}]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/work", "/tmp"}
    kubernetes_validate.validate(pod, "1.32.0", strict=True)


@pytest.mark.parametrize(("network", "egress"), [("none", []), ("egress", [{}])])
def test_network_policy_denies_ingress_and_egress_unless_allowed(network: str, egress: list[Any]) -> None:
    policy = sandbox_network_policy("sb-1", image_class(network), "p", "r1", "team")
    assert policy["spec"] == {"podSelector": {"matchLabels": {"shoal.dev/sandbox-id": "sb-1"}},
                              "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": egress}  # fmt: skip
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-123"
    kubernetes_validate.validate(policy, "1.32.0", strict=True)


def test_program_ids_that_are_not_label_values_are_hashed() -> None:
    assert program_label("abc-1") == "abc-1"
    hashed = program_label("user@example.com/../x" * 5)
    assert hashed.startswith("h-") and len(hashed) <= 63 and hashed == program_label("user@example.com/../x" * 5)
    pod = sandbox_pod("sb-2", image_class(), "a b", "r1", "team")
    assert pod["metadata"]["annotations"]["shoal.dev/program-id"] == "a b"


@pytest.mark.parametrize(
    ("sandbox", "message"),
    [
        ({"image": "x", "resources": {"maxProcesses": 10}}, "maxProcesses applies to local"),
    ],
)
def test_limits_a_backend_cannot_apply_are_rejected(sandbox: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ProgramClassConfig.model_validate({"name": "c", "model": "m", "sandbox": sandbox})
