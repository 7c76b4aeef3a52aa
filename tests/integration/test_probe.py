"""`ps verify-weights --probe` can't be fooled: three services behind one hand-written server block
(`/`, `/api`, `/py`), each probed at its own URL; error answers and answers from another upstream fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.nginx import Nginx, SiteBed, last_json, site_plan

SITE = """\
    server {
        listen {address}:{port};
{proxy_defaults}
        location / { proxy_pass http://shop_frontend; }
        location /api/ { proxy_pass http://shop_backend; }
        location /py/ { proxy_pass http://shop_py; }
        location /gone/ { return 404; }
    }
"""


@pytest.fixture
def three(nginx_factory: Callable[..., Nginx], project: Callable[..., Path], workdir: Path,
          run_sample: Any) -> Iterator[SiteBed]:
    """frontend at `/`, backend at `/api/`, py at `/py/`; frontend stable and both backend slots run."""
    raw, ports, upstreams = site_plan({"frontend": "canary", "backend": "canary", "py": "canary"}, "shop",
                                      workdir)
    nginx = nginx_factory(SITE, upstreams)
    for name, path in (("frontend", "/"), ("backend", "/api/"), ("py", "/py/")):
        raw["services"][name]["url"] = nginx.url + path
    raw["router"] = {"include": str(nginx.include), "url": nginx.url + "/",
                     "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                               "error_log": str(nginx.error_log)}}
    bed = SiteBed(nginx=nginx, config_path=project(raw), raw=raw, ports=ports)
    run_sample(port=ports["frontend"]["stable"], PS_SLOT="stable")
    bed.start_slots(run_sample, "backend")
    yield bed


def test_probe_measures_the_services_own_url(three: SiteBed, ps: Any) -> None:
    assert ps("set-weights", "--canary", "10", "--service", "backend").returncode == 0
    # the README's form: no --url, the probe goes to services.backend.url
    done = ps("--json", "verify-weights", "--expect-canary", "10", "--probe", "400", "--service", "backend")
    assert done.returncode == 0, done.stderr
    measured = last_json(done.stdout)["services"][0]["measured"]
    assert measured["url"] == three.nginx.url + "/api/"
    assert measured["valid"] == 400 and measured["invalid"] == {}
    assert measured["counts"] == {"stable": 360, "canary": 40}  # one worker: smooth round robin is exact
    # canary is really at 10 %: a probe expecting 0 % must fail on the measurement too
    zero = ps("--json", "verify-weights", "--expect-canary", "0", "--probe", "400", "--service", "backend")
    assert zero.returncode == 1
    problems = last_json(zero.stdout)["services"][0]["problems"]
    assert any("canary answered 40 of 400 valid answers" in p for p in problems), problems


def test_a_url_answering_404_fails_the_probe(three: SiteBed, ps: Any) -> None:
    three.raw["services"]["backend"]["url"] = three.nginx.url + "/gone/"
    three.save()
    done = ps("--json", "verify-weights", "--expect-canary", "0", "--probe", "50", "--service", "backend")
    assert done.returncode == 1, done.stdout
    assert "50 of 50 answers were 404" in done.stderr
    measured = last_json(done.stdout)["services"][0]["measured"]
    assert measured["valid"] == 0 and measured["invalid"] == {"status 404": 50}


def test_answers_from_another_upstream_fail_the_probe(three: SiteBed, ps: Any) -> None:
    # the frontend's location answers 200, but from servers outside the backend's upstream
    done = ps("--json", "verify-weights", "--expect-canary", "0", "--probe", "50", "--service", "backend",
              "--url", three.nginx.url + "/")
    assert done.returncode == 1, done.stdout
    assert "50 of 50 answers named a server outside upstream shop_backend" in done.stderr
    assert last_json(done.stdout)["services"][0]["measured"]["counts"] == {}


def test_no_service_url_is_exit_2_naming_the_key(three: SiteBed, ps: Any) -> None:
    del three.raw["services"]["backend"]["url"]
    three.save()
    done = ps("verify-weights", "--expect-canary", "0", "--probe", "50", "--service", "backend")
    assert done.returncode == 2, done.stderr
    assert "services.backend.url" in done.stderr and "Traceback" not in done.stderr
    assert len([ln for ln in done.stderr.splitlines() if ln.startswith("ps:")]) == 1
