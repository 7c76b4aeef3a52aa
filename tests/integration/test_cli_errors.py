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


# ---------------------------------------------------------------- -v: tracebacks masked like every line

HOOK_KEY = "hk7q2w9e4r5t6y8u1i3o"
GITLAB_PASSWORD = "glpat-userinfo-S3CRET-77"
GITLAB_QUERY_TOKEN = "query-token-S3CRET-88"
REGISTRY_PASSWORD = "registry-pass-S3CRET-99"


def _no_secret(done: Any, *secrets: str) -> None:
    text = done.stdout + done.stderr
    for secret in secrets:
        assert secret not in text, (secret, text[-3000:])


def test_verbose_traceback_masks_a_token_echoed_in_a_400_body(ps: Any, project: Any, httpserver: Any) -> None:
    project(CONFIG)
    httpserver.expect_request(f"/hooks/{HOOK_KEY}", method="POST").respond_with_data(
        f"invalid webhook id {HOOK_KEY}", status=400)
    env = {"MATTERMOST_WEBHOOK_URL": httpserver.url_for(f"/hooks/{HOOK_KEY}"),
           "REGISTRY_PASSWORD": REGISTRY_PASSWORD}
    done = ps("-v", "mattermost-notify", "--status", "success", "--fail-on-error", env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "HTTP 400" in done.stderr  # the traceback is there, masked
    assert done.stderr.strip().splitlines()[-1].startswith("ps: notification not delivered")
    _no_secret(done, HOOK_KEY, REGISTRY_PASSWORD)
    assert "****" in done.stderr


def test_verbose_traceback_masks_tokens_inside_gitlab_url(ps: Any, workdir: Path) -> None:
    from testbed.ports import address, free_port

    port = free_port()  # nothing listens: python-gitlab fails inside requests, deep in a traceback
    url = f"http://oauth2:{GITLAB_PASSWORD}@{address()}:{port}/?private_token={GITLAB_QUERY_TOKEN}"
    env = {"GITLAB_URL": url, "GITLAB_TOKEN": "glpat-token-S3CRET-66", "GITLAB_PROJECT": "1",
           "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567"}
    for args in (["-v", "gitlab-status", "--state", "success"],
                 ["-v", "--json", "gitlab-status", "--state", "failed"]):
        done = ps(*args, env=env)
        assert done.returncode in (1, 3), done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("ps: ")
        _no_secret(done, GITLAB_PASSWORD, GITLAB_QUERY_TOKEN, "glpat-token-S3CRET-66")


def test_verbose_internal_error_masks_registered_secrets(ps: Any, workdir: Path) -> None:
    """An unexpected exception whose text holds a secret: traceback and `ps:` line both masked."""
    code = ("import os, sys\n"
            "from pipeline_steps import cli\n"
            "def boom():\n"
            "    raise RuntimeError('cannot log in with ' + os.environ['REGISTRY_PASSWORD'])\n"
            "cli.cli.add_command(__import__('click').command('boom')(boom))\n"
            "cli.COMMANDS['boom'] = ('pipeline_steps.cli:cli', 'x')\n"
            "cli.LazyGroup.get_command = lambda self, ctx, name: self.commands.get(name)\n"
            "cli.main(sys.argv[1:])\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, "-v", "boom"], env={**ps.env, "REGISTRY_PASSWORD":
                          REGISTRY_PASSWORD}, cwd=workdir, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "RuntimeError: cannot log in with ****" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ps: internal error: RuntimeError")
    _no_secret(done, REGISTRY_PASSWORD)
