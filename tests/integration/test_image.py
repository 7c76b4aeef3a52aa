"""The container image of ps (Dockerfile at the repo root), built offline from a local Debian base.

Nothing can be pulled here, so BASE_IMAGE is `pipeline-steps/debian-python:base` (debootstrap + docker import,
made once and reused: only the first run ever pays for it) and the wheels are built on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.debian_base import (
    build_ps_image,
    build_stage_tag,
    ensure_debian_python_image,
    prepare_build_context,
)
from testbed.ports import address, unique

pytestmark = [pytest.mark.docker, pytest.mark.slow]

VALID_CONFIG = """\
app: shop
registry: 127.0.0.1:5000
services:
  web:
    context: .
    slots: {stable: 18081, canary: 18082}
"""


@pytest.fixture(scope="module")
def ps_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = ensure_debian_python_image(docker_client)
    context = prepare_build_context(tmp_path_factory.mktemp("image") / "context")
    tag = build_ps_image(docker_client, f"pipeline-steps/ps:{unique('test')}", base, context)
    yield tag
    for name in (tag, build_stage_tag(tag)):
        docker_client.images.remove(name)


@pytest.fixture
def in_image(docker_client: Any, ps_image: str) -> Callable[..., tuple[int, str]]:
    """Run a command in the ps image on the host network; (exit code, output)."""

    def run(*command: str, timeout: int = 120) -> tuple[int, str]:
        container = docker_client.containers.run(ps_image, list(command), detach=True, network_mode="host",
                                                 name=unique("pst-psimg-"),
                                                 labels={"pipeline-steps.test": "1"})
        try:
            code = int(container.wait(timeout=timeout)["StatusCode"])
            return code, container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    return run


def test_image_runs_ps_from_a_venv_on_the_path(in_image: Callable[..., tuple[int, str]]) -> None:
    code, output = in_image("ps", "--version")
    assert (code, output.strip()) == (0, "ps (pipeline-steps), version 0.1.0")
    code, output = in_image("sh", "-c", "command -v ps && ps --help")
    assert code == 0
    assert output.startswith("/opt/pipeline-steps/bin/ps") and "health-gate" in output


def test_config_validate_in_the_image(in_image: Callable[..., tuple[int, str]]) -> None:
    code, output = in_image("sh", "-c", f"printf '%s' '{VALID_CONFIG}' > ps.yaml && ps config validate")
    assert code == 0, output
    code, output = in_image("sh", "-c", "printf 'app: shop\\n' > ps.yaml && ps config validate")
    assert code == 2, output
    assert "registry: is required" in output and "Traceback" not in output


def test_health_gate_in_the_image_reaches_a_sample_app(in_image: Callable[..., tuple[int, str]],
                                                     run_sample: Callable[..., tuple[Any, int]]) -> None:
    _, healthy = run_sample()
    code, output = in_image("ps", "health-gate", "--url", f"http://{address()}:{healthy}/health",
                            "--retries", "3", "--interval", "500ms")
    assert code == 0, output
    _, sick = run_sample(APP_STATUS="down")
    code, output = in_image("ps", "health-gate", "--url", f"http://{address()}:{sick}/health",
                            "--retries", "3", "--interval", "200ms")
    assert code == 1, output


def test_dockerfile_defaults_to_python_slim_and_supports_offline_wheels() -> None:
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "--no-index --find-links" in text and "ARG WHEELS=" in text
