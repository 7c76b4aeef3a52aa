"""shared/: the example ps.yaml, the nginx site template, and the CI tool installer."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from testbed.nginx import Nginx
from testbed.ports import address

from .cifiles import REPO
from .conftest import site_servers

SHARED = REPO / "shared"


def test_example_ps_yaml_is_a_valid_config(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config

    raw = yaml.safe_load((SHARED / "ps.yaml.example").read_text())
    config = parse_config(raw, "ps.yaml.example", tmp_path)
    web = config.services["web"]
    assert web.slots == {"stable": 8081, "canary": 8082}
    assert web.upstream == "sample_app_web"
    assert config.router is not None and config.router.include.endswith("sample-app.upstreams.conf")
    assert [s.weight for s in config.canary.steps] == [10, 40, 70]
    assert config.notify.webhook_env == "MATTERMOST_WEBHOOK_URL"


def test_example_ps_yaml_matches_the_json_schema() -> None:
    import jsonschema

    schema = json.loads((REPO / "pipeline_steps" / "schema" / "ps.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((SHARED / "ps.yaml.example").read_text()), schema)


def test_nginx_site_example_has_the_include_retry_and_upstream_header() -> None:
    import crossplane

    parsed = crossplane.parse(str(SHARED / "nginx" / "site.conf.example"), single=True, check_ctx=False,
                              comments=False)
    assert parsed["status"] == "ok", parsed["errors"]
    top = parsed["config"][0]["parsed"]
    includes = [d["args"] for d in top if d["directive"] == "include"]
    assert includes == [["/etc/nginx/pipeline-steps/sample-app.upstreams.conf"]]  # the one line
    location = next(d for d in top if d["directive"] == "server")["block"]
    location_block = next(d for d in location if d["directive"] == "location")["block"]
    directives = {d["directive"]: d["args"] for d in location_block}
    assert directives["proxy_pass"] == ["http://sample_app_web"]
    assert directives["proxy_next_upstream"][:2] == ["error", "timeout"]
    assert directives["add_header"] == ["X-Upstream", "$upstream_addr", "always"]


@pytest.mark.docker
def test_nginx_site_example_serves_and_fails_over(nginx_factory: Callable[..., Nginx],
                                                  run_sample: Callable[..., tuple[Any, int]]) -> None:
    good, good_port = run_sample(PS_SLOT="stable")
    _, bad_port = run_sample(PS_SLOT="canary")
    _.remove(force=True)  # a slot that is down: proxy_next_upstream must hide it
    nginx = nginx_factory(site_servers("sample_app_web"),
                          f"upstream sample_app_web {{\n    server {address()}:{good_port} weight=500;\n"
                          f"    server {address()}:{bad_port} weight=500;\n}}\n")
    answers = [requests.get(f"{nginx.url}/x", timeout=5) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.headers["X-Slot"] for a in answers} == {"stable"}
    assert all(f"{address()}:{good_port}" in a.headers["X-Upstream"] for a in answers)
    assert any(f"{address()}:{bad_port}" in a.headers["X-Upstream"] for a in answers)  # tried, then retried


def test_install_ci_tools_is_idempotent() -> None:
    script = REPO / "scripts" / "install-ci-tools"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
    text = script.read_text()
    assert "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" in text and "GITLAB_CI_LOCAL_VERSION=4.73.0" in text
    assert (REPO / ".tools" / "node_modules" / "gitlab-ci-local" / "package.json").exists()
    assert "/.tools/" in (REPO / ".gitignore").read_text().split()
