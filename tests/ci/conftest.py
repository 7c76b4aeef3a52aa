"""Fixtures for running the CI files: tools, the Jenkinsfile stub, and a project on the test bed.

A `ci_bed` is the sample app as a git project with the CI files copied in, a ps.yaml pointing at
the bed's Docker engine, registry and nginx (whose site is shared/nginx/site.conf.example), and one
local HTTP server standing in for Mattermost (/hooks/<token>) and GitLab (/api/v4/...).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import images
from testbed.nginx import Nginx
from testbed.ports import address, free_ports, unique
from testbed.registry import Registry

from .cifiles import GITLAB_CI, GITLAB_TEMPLATE, JENKINSFILE, REPO, STUB, TOOLS

VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = "run scripts/install-ci-tools (after apt-get update on a fresh machine)"


def java_home() -> str | None:
    """JAVA_HOME for Debian's groovy: its default-java link, else the JDK behind `java` on PATH."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    if Path("/usr/lib/jvm/default-java/bin/java").exists():
        return "/usr/lib/jvm/default-java"
    java = shutil.which("java")
    return str(Path(java).resolve().parent.parent) if java else None


@pytest.fixture(scope="session")
def groovy() -> Callable[..., Any]:
    """`groovy(*args)` runs the Jenkinsfile stub and returns its JSON."""
    binary = shutil.which("groovy")
    if binary is None or java_home() is None:
        pytest.fail(f"groovy or a Java runtime is missing: {INSTALL_HINT}")
    env = {**os.environ, "JAVA_HOME": java_home() or ""}

    def run(*args: str) -> Any:
        done = subprocess.run([binary, str(STUB), *args], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=180, check=False)
        assert done.returncode == 0, f"jenkins stub failed:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout)

    return run


@pytest.fixture(scope="session")
def jenkins_plans(groovy: Callable[..., Any]) -> dict[str, Any]:
    """The Jenkinsfile evaluated once for every DEPLOY_TYPE (one JVM start for all of them)."""
    types = "stable,canary-manual,canary-auto,promote-canary,rollback,blue-green"
    plans: dict[str, Any] = groovy(str(JENKINSFILE), types)
    return plans


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{name} is not installed under .tools: {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------- fake Mattermost and GitLab


@dataclass
class Endpoints:
    """What the local Mattermost and GitLab stand-ins received."""

    base: str
    hook_token: str
    gitlab_token: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/hooks/{self.hook_token}"

    def notified(self) -> list[str]:
        """The text of every Mattermost message, in order."""
        return [json.dumps(p) for p in self.posts]

    def sent(self) -> list[str]:
        """The deploy status of every Mattermost message (started, success, failure, rolled-back)."""
        return [str(p.get("props", {}).get("pipeline_steps", {}).get("status")) for p in self.posts]


@pytest.fixture
def endpoints(httpserver: Any) -> Endpoints:
    from werkzeug.wrappers import Request, Response

    found = Endpoints(base=httpserver.url_for("").rstrip("/"), hook_token=secrets.token_hex(12),
                      gitlab_token=secrets.token_hex(10))

    def mattermost(request: Request) -> Response:
        body = request.get_json(force=True, silent=True)
        found.posts.append(body or {"raw": request.get_data(as_text=True)})
        return Response("ok", status=200, content_type="text/plain")

    def gitlab(request: Request) -> Response:
        if request.headers.get("PRIVATE-TOKEN") != found.gitlab_token and \
                request.headers.get("Authorization") != f"Bearer {found.gitlab_token}":
            return Response(json.dumps({"message": "401 Unauthorized"}), status=401,
                            content_type="application/json")
        body = request.get_json(force=True, silent=True) or dict(request.form)
        found.statuses.append({"path": request.path, **body})
        answer = {"id": len(found.statuses), "sha": request.path.rsplit("/", 1)[-1], "name": "ps",
                  "status": body.get("state", "pending")}
        return Response(json.dumps(answer), status=201, content_type="application/json")

    httpserver.expect_request(f"/hooks/{found.hook_token}", method="POST").respond_with_handler(mattermost)
    httpserver.expect_request(re.compile(r"^/api/v4/.*")).respond_with_handler(gitlab)
    return found


# ---------------------------------------------------------------- the project on the test bed


@dataclass
class CiBed:
    """The sample app as a git project wired to the bed; `env()` is what a CI runner would export."""

    repo: Path
    app: str
    config: dict[str, Any]
    registry: Registry
    nginx: Nginx
    endpoints: Endpoints
    docker_host: str
    slots: dict[str, int]

    @property
    def upstream(self) -> str:
        return f"{self.app}_web".replace("-", "_").replace(".", "_")

    def secrets(self) -> dict[str, str]:
        """The CI secrets, exported to a job as masked variables / Jenkins credentials would be."""
        return {"REGISTRY_USER": self.registry.user, "REGISTRY_PASSWORD": self.registry.password,
                "MATTERMOST_WEBHOOK_URL": self.endpoints.webhook_url,
                "GITLAB_TOKEN": self.endpoints.gitlab_token}

    def secret_values(self) -> list[str]:
        return [self.registry.password, self.endpoints.hook_token, self.endpoints.gitlab_token]

    def env(self, **extra: str) -> dict[str, str]:
        keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "JAVA_HOME")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        env["PYTHONPATH"] = str(REPO)
        env["DOCKER_HOST"] = self.docker_host
        env["XDG_STATE_HOME"] = str(self.repo.parent / "state")
        env.update(extra)
        return env

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
                              cwd=self.repo, check=True, capture_output=True, text=True).stdout.strip()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def commit_change(self, message: str, app_sh_line: str | None = None) -> str:
        """A new commit (so a new BUILD_ID); optionally a line added to app.sh before it serves."""
        app_sh = self.repo / "app" / "app.sh"
        text = app_sh.read_text()
        if app_sh_line:
            text = text.replace("exec nc", f"{app_sh_line}\nexec nc", 1)
        app_sh.write_text(text + f"# {message}\n")
        self.git("commit", "-qam", message)
        return self.head()

    def history(self) -> list[dict[str, Any]]:
        """The bed's deployment history (state_dir .state), oldest first."""
        path = self.repo / ".state" / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def leased(self) -> bool:
        """Whether a pipeline still holds the deploy lock's lease."""
        return (self.repo / ".state" / "deploy.lease.json").exists()

    def through_nginx(self, count: int = 20) -> list[str]:
        """The X-Slot of `count` sequential requests through the bed's nginx."""
        import requests

        url = f"{self.nginx.url}/"
        return [requests.get(url, timeout=5).headers.get("X-Slot", "?") for _ in range(count)]


def site_servers(app_upstream: str) -> str:
    """shared/nginx/site.conf.example's server block for the bed: its port, the bed's upstream name.

    Read and rebuilt with crossplane (no regex over nginx configs); the example's own `include` line
    is left out because the bed's nginx.conf already includes the file ps owns."""
    import crossplane

    parsed = crossplane.parse(str(REPO / "shared" / "nginx" / "site.conf.example"), single=True,
                              check_ctx=False, comments=False)
    assert parsed["status"] == "ok", parsed["errors"]
    blocks = []
    for directive in parsed["config"][0]["parsed"]:
        if directive["directive"] != "server":
            continue
        for inner in directive["block"]:
            if inner["directive"] == "listen":
                inner["args"] = [address() + ":{port}"]
            if inner["directive"] == "location":
                for d in inner["block"]:
                    if d["directive"] == "proxy_pass":
                        d["args"] = [f"http://{app_upstream}"]
        blocks.append(directive)
    return crossplane.build(blocks)


@pytest.fixture
def ci_bed(request: pytest.FixtureRequest, git_repo: Path, engine: Any, sample_image: str,
           registry: Registry, nginx_factory: Callable[..., Nginx], endpoints: Endpoints,
           docker_client: Any) -> Iterator[CiBed]:
    """The bed with one service `web`, or (indirect parametrization) the services named, each with a
    stable/canary pair, or {name: "blue-green"} for a blue/green pair."""
    param: Any = getattr(request, "param", ("web",))
    pairs: dict[str, str] = param if isinstance(param, dict) else dict.fromkeys(param, "canary")
    names = tuple(pairs)
    app = unique("ci")
    ports = free_ports(2 * len(names))
    slots = {name: dict(zip(("blue", "green") if pairs[name] == "blue-green" else ("stable", "canary"),
                            ports[2 * i:2 * i + 2], strict=True)) for i, name in enumerate(names)}
    stable, canary = ports[0], ports[1]
    upstream = f"{app}_{names[0]}"
    nginx = nginx_factory(
        site_servers(upstream),
        "".join(f"upstream {app}_{name} {{\n    server {address()}:{ports[2 * i]} weight=999;\n"
                f"    server {address()}:{ports[2 * i + 1]} weight=1;\n}}\n" for i, name in enumerate(names)))
    config: dict[str, Any] = {
        "app": app,
        "registry": registry.address,
        "hosts": [{"name": "local", "docker": engine.base_url, "address": address()}],
        "services": {name: {
            "context": "app", "port": 80, "slots": slots[name],
            "health": {"path": "/health", "expect": {"status": "healthy"}, "interval": "300ms",
                       "timeout": "2s"},
        } for name in names},
        "router": {"include": str(nginx.include),
                   "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                             "error_log": str(nginx.error_log)},
                   "url": nginx.url},
        "canary": {"steps": [10, 40, 70], "pause": "1s", "check_interval": "300ms"},
        "state_dir": ".state",
    }
    repo = git_repo
    (repo / "ps.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy2(JENKINSFILE, repo / "Jenkinsfile")
    shutil.copy2(GITLAB_CI, repo / ".gitlab-ci.yml")
    (repo / "shared" / "gitlab").mkdir(parents=True)
    shutil.copy2(GITLAB_TEMPLATE, repo / "shared" / "gitlab" / GITLAB_TEMPLATE.name)
    (repo / ".gitignore").write_text(".gitlab-ci-local/\n.state/\nbuild.env\nps-report.*\n")
    bed = CiBed(repo=repo, app=app, config=config, registry=registry, nginx=nginx, endpoints=endpoints,
                docker_host=engine.base_url, slots={"stable": stable, "canary": canary})
    bed.git("add", "-A")
    bed.git("commit", "-qm", "CI files and ps.yaml")
    yield bed
    for container in docker_client.containers.list(all=True, filters={"name": app}):
        try:
            container.remove(force=True)
        except Exception:
            pass
    images.remove_images(docker_client, repo_prefix=f"{registry.address}/{app}/")


THREE_SERVICES = ("frontend", "backend", "python")


def running_builds(bed: CiBed) -> dict[tuple[str, str], str]:
    """(service, slot) -> BUILD_ID of every running slot container of the bed's app."""
    import docker

    client = docker.DockerClient(base_url=bed.docker_host)
    try:
        labels = [c.labels for c in client.containers.list(filters={"name": bed.app})]
    finally:
        client.close()
    return {(lbl.get("pipeline-steps.service", ""), lbl.get("pipeline-steps.slot", "")):
            lbl.get("pipeline-steps.build-id", "") for lbl in labels}
