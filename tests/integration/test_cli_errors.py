"""Failures as a user meets them: one clear line, the documented exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CONFIG = {"app": "shop", "registry": "127.0.0.1:5000",
          "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}}}}


@pytest.mark.parametrize("args", [["build", "--build-arg", "BASE_IMAGE=pipeline-steps/busybox:base"],
                                  ["push"], ["--json", "build"]])
def test_docker_engine_down_exits_3_in_one_line(ps: Any, git_repo: Path, project: Any,
                                                args: list[str]) -> None:
    project(CONFIG)
    done = ps(*args, env={"DOCKER_HOST": "unix:///nonexistent.sock", "REGISTRY_USER": "u",
                          "REGISTRY_PASSWORD": "not-shown-pass"})
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["ps: Docker engine of host local (unix:///nonexistent.sock) is unreachable: "
                     "connection refused or socket missing (is dockerd running?)"]
    assert "Traceback" not in done.stderr and "not-shown-pass" not in done.stdout + done.stderr


def test_engine_of_a_configured_tcp_host_down_exits_3(ps: Any, git_repo: Path, project: Any) -> None:
    project({**CONFIG, "hosts": [{"name": "builder", "docker": "tcp://127.0.0.1:1"}]})
    done = ps("build")
    assert done.returncode == 3
    assert done.stderr.startswith("ps: Docker engine of host builder (tcp://127.0.0.1:1) is unreachable")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("step", ["build", "push"])
def test_missing_config_exits_2(docker_ps: Any, git_repo: Path, step: str) -> None:
    done = docker_ps("--config", "nowhere.yaml", step)
    assert done.returncode == 2
    assert done.stderr.strip() == ("ps: nowhere.yaml: config file not found: nowhere.yaml "
                                   "(use --config FILE or PS_CONFIG)")


@pytest.mark.parametrize("step", ["build", "push"])
def test_invalid_config_exits_2_listing_paths(docker_ps: Any, git_repo: Path, project: Any,
                                              step: str) -> None:
    project({"app": "shop", "registry": "http://127.0.0.1:5000",
             "services": {"backend": {"slots": {"stable": 1}, "health": {"path": "ready"}}}})
    done = docker_ps(step)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ps: ps.yaml: registry: give host[:port][/namespace] without http:// or https://",
        "ps: ps.yaml: services.backend.slots: needs a full pair: stable and canary, or blue and green",
        'ps: ps.yaml: services.backend.health.path: must start with "/"',
    ]


@pytest.mark.parametrize("step", ["build", "push"])
def test_unknown_service_exits_2(docker_ps: Any, git_repo: Path, project: Any, step: str) -> None:
    project(CONFIG)
    done = docker_ps(step, "--service", "nope")
    assert done.returncode == 2
    assert done.stderr.strip() == "ps: unknown service 'nope' (configured: web)"


def test_missing_build_context_exits_2(docker_ps: Any, git_repo: Path, project: Any) -> None:
    project({**CONFIG, "services": {"web": {"context": "gone", "slots": {"stable": 1, "canary": 2}}}})
    done = docker_ps("build")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("ps: services.web.context: directory not found:")


def test_invalid_yaml_exits_2(docker_ps: Any, git_repo: Path, project: Any) -> None:
    project("app: shop\nservices: {web: [\n")
    done = docker_ps("build")
    assert done.returncode == 2 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr
