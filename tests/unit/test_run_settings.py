"""deploy-env's idempotency: every run setting ps gives a slot container is compared (no engine needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline_steps.adapters import slots
from pipeline_steps.config import parse_config
from pipeline_steps.operations.deploy_env import RunSettings, changed_settings, wanted_settings


def _wanted(tmp_path: Path, port: int = 18082) -> RunSettings:
    config = parse_config({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path),
                           "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": port}}}},
                          base_dir=tmp_path)
    service = config.service("web")
    return wanted_settings(config, service, config.hosts[0], "canary", "b1",
                           SimpleNamespace(id="sha256:img1"), "sha256:dig1", {"TZ": "Asia/Seoul", "A": "1"})


def _attrs(wanted: RunSettings) -> dict[str, Any]:
    """Inspect attrs of a container ps made from `wanted` (the image adds PATH to the env)."""
    return {
        "Image": wanted.image_id,
        "Config": {"Env": ["PATH=/bin", *(f"{k}={v}" for k, v in wanted.env.items())],
                   "Labels": {**wanted.labels, slots.LABEL_DEPLOYED_AT: "2026-12-01T18:20:00+09:00",
                              slots.LABEL_DEPLOYED_BY: "dev"}},
        "HostConfig": {"PortBindings": {k: [{"HostIp": ip, "HostPort": str(port)}]
                                        for k, (ip, port) in wanted.ports.items()},
                       "RestartPolicy": {"Name": wanted.restart_policy, "MaximumRetryCount": 0},
                       "LogConfig": copy.deepcopy(wanted.log_config)},
    }


def test_same_settings_are_no_change(tmp_path: Path) -> None:
    wanted = _wanted(tmp_path)
    assert changed_settings(wanted, _attrs(wanted)) == []


def test_a_changed_port_is_a_change(tmp_path: Path) -> None:
    before = _attrs(_wanted(tmp_path, 18082))
    assert changed_settings(_wanted(tmp_path, 18083), before) == [
        "new port (127.0.0.1:18082 -> 127.0.0.1:18083)"]


def _set(attrs: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        attrs = attrs[key]
    attrs[last] = value


@pytest.mark.parametrize(("path", "value", "reason"), [
    ("Image", "sha256:other", "new image"),
    ("Config.Labels.pipeline-steps.build-id", "b0", "new image"),
    ("Config.Labels.pipeline-steps.env-hash", "sha256:old", "new environment"),
    ("Config.Env", ["TZ=UTC", "A=1"], "new environment"),
    ("Config.Labels.pipeline-steps.slot", "stable", "new labels"),
    ("HostConfig.RestartPolicy", {"Name": "always"}, "new restart policy (always -> unless-stopped)"),
    ("HostConfig.LogConfig", {"Type": "json-file", "Config": {}}, "new log config"),
    ("HostConfig.PortBindings", {}, "new port (none -> 127.0.0.1:18082)"),
])
def test_every_run_setting_is_compared(tmp_path: Path, path: str, value: Any, reason: str) -> None:
    wanted = _wanted(tmp_path)
    attrs = _attrs(wanted)
    if path.startswith("Config.Labels."):
        attrs["Config"]["Labels"][path.removeprefix("Config.Labels.")] = value
    else:
        _set(attrs, path, value)
    assert changed_settings(wanted, attrs) == [reason]


def test_deployed_at_and_by_are_not_compared(tmp_path: Path) -> None:
    wanted = _wanted(tmp_path)
    attrs = _attrs(wanted)
    attrs["Config"]["Labels"][slots.LABEL_DEPLOYED_AT] = "2020-01-01T00:00:00+09:00"
    attrs["Config"]["Labels"][slots.LABEL_DEPLOYED_BY] = "someone else"
    assert changed_settings(wanted, attrs) == []
