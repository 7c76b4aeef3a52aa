"""A whole deploy bed for benchmarks: engine, nginx in front of slot ports, a ps.yaml, sample-app builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import images
from testbed.engine import Engine, ensure_engine
from testbed.nginx import Nginx, server_block, start_nginx
from testbed.ports import address, free_ports, unique

REPO = Path(__file__).resolve().parent.parent
REGISTRY = "ps-bench.local"


@dataclass
class DeployBed:
    """Everything `ps deploy` needs, on the run's loopback address; `close()` removes it all."""

    engine: Engine
    client: Any
    nginx: Nginx
    workdir: Path
    app: str
    base_image: str
    slots: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "ps.yaml"

    def url(self, service: str) -> str:
        return f"{self.nginx.url}/{service}/"

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        full = {**os.environ, "DOCKER_HOST": self.engine.base_url, "PYTHONPATH": str(REPO), **(env or {})}
        for name in ("CI_COMMIT_SHA", "GIT_COMMIT", "MATTERMOST_WEBHOOK_URL"):
            full.pop(name, None)
        return full

    def ps(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=self.workdir,
                              env=self._env(env), capture_output=True, text=True, check=False, timeout=600)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """The same run in the background, stdout and stderr piped (read stderr line by line)."""
        return subprocess.Popen([sys.executable, "-m", "pipeline_steps", *args], cwd=self.workdir,
                                env=self._env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def set_config(self, section: str, **values: Any) -> None:
        """Change keys of one ps.yaml section (e.g. set_config("canary", probe=400))."""
        raw = yaml.safe_load(self.config_path.read_text())
        raw.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    def build(self, build_id: str, fail_after: int | None = None) -> None:
        """Tag a sample-app image for every service under `build_id` (FAIL_AFTER baked in if given)."""
        ctx = images.copy_sample_app(self.workdir / f"ctx-{build_id}")
        if fail_after is not None:
            with open(ctx / "Dockerfile", "a") as fh:
                fh.write(f"\nENV FAIL_AFTER={fail_after}\n")
        image, _ = self.client.images.build(path=str(ctx), rm=True,
                                            buildargs={"BUILD_ID": build_id, "BASE_IMAGE": self.base_image})
        for service in self.slots:
            image.tag(f"{REGISTRY}/{self.app}/{service}", build_id)

    def close(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"pipeline-steps.app={self.app}"}):
            c.remove(force=True)
        images.remove_images(self.client, repo_prefix=f"{REGISTRY}/{self.app}/")
        self.nginx.stop()
        self.client.close()
        self.engine.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_deploy_bed(kinds: dict[str, str], canary: dict[str, Any] | None = None) -> DeployBed:
    """kinds: service -> "canary" or "blue-green". Slot ports are free loopback ports."""
    engine = ensure_engine()
    client = engine.client()
    base = images.ensure_base_image(client)
    app = unique("bench")
    upstream = app.replace("-", "_")
    slots: dict[str, dict[str, int]] = {}
    for service, kind in kinds.items():
        a, b = free_ports(2)
        names = ("stable", "canary") if kind == "canary" else ("blue", "green")
        slots[service] = {names[0]: a, names[1]: b}
    first = "".join(
        f"upstream {upstream}_{s} {{ server {address()}:{list(p.values())[0]} weight=999; "
        f"server {address()}:{list(p.values())[1]} weight=1; keepalive 32; }}\n" for s, p in slots.items())
    nginx = start_nginx(server_block(slots, app), first)
    workdir = Path(tempfile.mkdtemp(prefix="ps-bench-"))
    bed = DeployBed(engine, client, nginx, workdir, app, base, slots)
    config = {
        "app": app, "registry": REGISTRY,
        "hosts": [{"name": "local", "docker": engine.base_url, "address": address()}],
        "services": {s: {"context": ".", "slots": p, "url": bed.url(s),
                         "health": {"path": "/health", "interval": "100ms", "timeout": "2s", "retries": 50}}
                     for s, p in slots.items()},
        "router": {"include": str(nginx.include), "url": nginx.url,
                   "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                             "error_log": str(nginx.error_log)}},
        "canary": {"steps": [10, 40, 70], "pause": "1s", "check_interval": "200ms", **(canary or {})},
        "state_dir": str(workdir / "state"),
    }
    bed.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return bed
