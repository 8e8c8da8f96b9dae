"""Sandbox settings from the environment: values, the router id, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.router.sandboxes.service import make_backend, settings_from_env
from shoal.router.sandboxes.settings import SandboxSettings


def test_settings_and_router_id_from_env() -> None:
    settings = settings_from_env({"SHOAL_SANDBOXES": '{"backend": "kubernetes", "namespace": "team"}',
                                  "SHOAL_ROUTER_ID": "front-router-0"})  # fmt: skip
    assert (settings.backend, settings.namespace, settings.router_id) == ("kubernetes", "team", "front-router-0")
    assert settings_from_env({}).router_id == "router"
    explicit = settings_from_env({"SHOAL_SANDBOXES": "routerId: mine\nmaxSandboxes: 5", "SHOAL_ROUTER_ID": "other"})
    assert explicit.router_id == "mine" and explicit.max_sandboxes == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHOAL_SANDBOXES": "{broken"}, "SHOAL_SANDBOXES: not YAML/JSON"),
        ({"SHOAL_SANDBOXES": "[1, 2]"}, "expected a mapping"),
        ({"SHOAL_SANDBOXES": '{"backend": "docker"}'}, "SHOAL_SANDBOXES: backend: Input should be 'local' or"),
        ({"SHOAL_SANDBOXES": '{"maxSandbox": 3}'}, "maxSandbox: Extra inputs are not permitted"),
        ({"SHOAL_ROUTER_ID": "Bad_Id"}, "routerId: String should match pattern"),
    ],
)
def test_bad_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        settings_from_env(env)
    assert "\n" not in str(err.value)


def test_a_backend_that_cannot_start_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"local sandbox backend: .*file") as err:
        make_backend(SandboxSettings(state_dir=str(blocker / "sandboxes")))
    assert "\n" not in str(err.value)
