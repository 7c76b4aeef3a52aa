"""`ps push` against the real Docker engine and a real registry with htpasswd auth."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from testbed.ports import address, free_port
from testbed.registry import Registry

BASE_ARG = "BASE_IMAGE=pipeline-steps/busybox:base"
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")


def write_project(project: Any, app: str, registry: str) -> None:
    project({"app": app, "registry": registry,
             "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}}}})


def built(docker_ps: Any, git_repo: Path, project: Any, app: str, registry: str) -> str:
    """Write ps.yaml for `registry`, build the sample app, return its BUILD_ID."""
    write_project(project, app, registry)
    done = docker_ps("build", "--build-arg", BASE_ARG)
    assert done.returncode == 0, done.stderr
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=git_repo, check=True, capture_output=True,
                          text=True).stdout.strip()[:12]


def creds(registry: Registry, password: str | None = None) -> dict[str, str]:
    return {"REGISTRY_USER": registry.user, "REGISTRY_PASSWORD": password or registry.password}


def registry_digest(registry: Registry, name: str, tag: str) -> str | None:
    answer = requests.head(f"http://{registry.address}/v2/{name}/manifests/{tag}", timeout=5,
                           auth=(registry.user, registry.password), headers={"Accept": MANIFEST_TYPES})
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


def test_push_prints_the_registry_digest_then_is_a_no_op(docker_ps: Any, git_repo: Path, project: Any,
                                                         registry: Registry, app_name: str) -> None:
    bid = built(docker_ps, git_repo, project, app_name, registry.address)
    done = docker_ps("--json", "push", "--tag", "latest", env=creds(registry))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["user"] == registry.user
    digests = {i["image"]: i["digest"] for i in record["images"]}
    ref = f"{registry.address}/{app_name}/web:{bid}"
    assert set(digests) == {ref, f"{registry.address}/{app_name}/web:latest"}
    assert digests[ref] == registry_digest(registry, f"{app_name}/web", bid)
    assert digests[ref].startswith("sha256:") and f"pushed {ref} {digests[ref]}" in done.stderr
    assert registry.password not in done.stdout + done.stderr

    again = docker_ps("push", "--tag", "latest", env=creds(registry))
    assert again.returncode == 0, again.stderr
    assert f"{ref} already pushed ({digests[ref]})" in again.stdout
    assert "pushing" not in again.stdout


def test_wrong_password_fails_at_once_and_is_never_shown(docker_ps: Any, git_repo: Path, project: Any,
                                                         registry: Registry, app_name: str) -> None:
    built(docker_ps, git_repo, project, app_name, registry.address)
    wrong = "Wr0ng-" + registry.password
    for args in (["push"], ["-v", "push"], ["--json", "push"]):
        done = docker_ps(*args, env=creds(registry, wrong))
        assert done.returncode == 1, done.stderr
        refused = f"ps: registry {registry.address} refused the credentials of user {registry.user}"
        assert refused in done.stderr
        assert "retrying" not in done.stdout + done.stderr  # an auth failure is not retried
        assert wrong not in done.stdout + done.stderr and registry.password not in done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["ok"] is False and record["exit_code"] == 1


def test_no_credentials_is_a_clear_failure(docker_ps: Any, git_repo: Path, project: Any,
                                           registry: Registry, app_name: str, workdir: Path) -> None:
    built(docker_ps, git_repo, project, app_name, registry.address)
    done = docker_ps("push", env={"DOCKER_CONFIG": str(workdir / "no-docker-config")})
    assert done.returncode == 1
    assert "wants credentials: set REGISTRY_USER and REGISTRY_PASSWORD, or docker login" in done.stderr


def test_credentials_from_the_docker_config(docker_ps: Any, git_repo: Path, project: Any,
                                            registry: Registry, app_name: str, workdir: Path) -> None:
    bid = built(docker_ps, git_repo, project, app_name, registry.address)
    config_dir = workdir / "docker-config"
    config_dir.mkdir()
    token = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    done = docker_ps("push", env={"DOCKER_CONFIG": str(config_dir)})
    assert done.returncode == 0, done.stderr
    digest = registry_digest(registry, f"{app_name}/web", bid)
    assert digest and digest in done.stdout
    assert registry.password not in done.stdout + done.stderr


def test_registry_down_exits_3_after_retries(docker_ps: Any, git_repo: Path, project: Any,
                                             app_name: str) -> None:
    nobody = f"{address()}:{free_port()}"
    built(docker_ps, git_repo, project, app_name, nobody)
    done = docker_ps("push", "--attempts", "3", "--backoff", "50ms",
                     env={"REGISTRY_USER": "ci", "REGISTRY_PASSWORD": "whatever-pass"})
    assert done.returncode == 3, done.stderr
    assert done.stdout.count("retrying") == 2
    assert done.stderr.strip() == f"ps: registry {nobody} is unreachable after 3 attempts: connection refused"


class LateProxy:
    """A TCP forwarder to `target` that starts listening only after `delay` seconds."""

    def __init__(self, port: int, target: tuple[str, int], delay: float) -> None:
        self.port, self.target, self.delay = port, target, delay
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LateProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _serve(self) -> None:
        if self.stopped.wait(self.delay):
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((address(), self.port))
            server.listen(16)
            server.settimeout(0.2)
            while not self.stopped.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target, timeout=10)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_transient_failures_are_retried_until_the_registry_answers(
        docker_ps: Any, git_repo: Path, project: Any, registry: Registry, app_name: str) -> None:
    port = free_port()
    late = f"{address()}:{port}"
    bid = built(docker_ps, git_repo, project, app_name, late)
    host, _, target_port = registry.address.partition(":")
    started = time.monotonic()
    with LateProxy(port, (host, int(target_port)), delay=2.5):
        done = docker_ps("push", "--attempts", "8", "--backoff", "200ms", env=creds(registry))
    assert done.returncode == 0, done.stderr
    assert "connection refused; retrying" in done.stdout
    assert time.monotonic() - started < 60
    assert registry_digest(registry, f"{app_name}/web", bid) is not None  # it went through to the registry


def test_missing_local_image_exits_2(docker_ps: Any, git_repo: Path, project: Any, registry: Registry,
                                     app_name: str) -> None:
    write_project(project, app_name, registry.address)
    done = docker_ps("push", "--build-id", "never-built", env=creds(registry))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"ps: image {registry.address}/{app_name}/web:never-built is not in the "
                                   "local engine: run ps build first (with the same --build-id)")


def test_dry_run_pushes_nothing(docker_ps: Any, git_repo: Path, project: Any, registry: Registry,
                                app_name: str) -> None:
    bid = built(docker_ps, git_repo, project, app_name, registry.address)
    done = docker_ps("--dry-run", "push", env=creds(registry))
    assert done.returncode == 0, done.stderr
    assert f"would push {registry.address}/{app_name}/web:{bid}" in done.stdout
    assert registry_digest(registry, f"{app_name}/web", bid) is None
