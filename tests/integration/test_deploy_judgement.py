"""canary-auto with canary.analysis on, end to end: the bed's Docker engine, real nginx with the include ps
writes (log_format ps_json + access_log at http level), the sample app, a bounded load through nginx."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import images
from testbed.load import LoadGenerator
from testbed.nginx import json_deploy, last_json
from testbed.ports import address, unique

pytestmark = [pytest.mark.slow, pytest.mark.docker]
APP = unique("judged")
REGISTRY = "ps-test.local"
OLD, BAD, GOOD, SLOW = "aaaa00000001", "bbbb0000bad5", "cccc00000003", "dddd0000s100"


@pytest.fixture(scope="module")
def builds(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The stable build, a canary whose every 20th request answers 500, an equal canary, and one that
    answers 100 ms later."""
    images.build_variants(docker_client, base_image, f"{REGISTRY}/{APP}/web",
                          {OLD: "", BAD: "ENV FAIL_EVERY=20\n", GOOD: "", SLOW: "ENV SLOW_MS=100\n"},
                          lambda: tmp_path_factory.mktemp("ctx"))
    yield
    images.remove_images(docker_client, repo_prefix=f"{REGISTRY}/{APP}/")


@pytest.fixture
def bed(traffic_bed: Callable[..., Any], engine: Any, docker_client: Any, builds: None) -> Iterator[Any]:
    made = traffic_bed({"web": "canary"}, app=APP, hosts=[{"name": "local", "docker": engine.base_url,
                                                          "address": address()}])
    raw = made.for_deploys(REGISTRY)
    raw["canary"] = {"steps": [20], "pause": "20s", "check_interval": "1s", "probe": 0,
                     "analysis": {"enabled": True, "max_error_rate_increase": 0.02,
                                  "max_p99_increase": "100ms", "min_requests": 50, "extend": "0s"}}
    made.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the user's nginx.conf logs at http level, so the include's http-level access_log applies
    # (the bed's `access_log off;` would switch off every http-level log, ps's included)
    conf = Path(made.nginx.conf)
    conf.write_text(conf.read_text().replace("    access_log off;\n", ""))
    made.nginx.reload()
    yield made
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
        c.remove(force=True)


def _deploy(ps: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return json_deploy(ps, *args)  # type: ignore[no-any-return]


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return last_json(done.stdout)


def test_a_canary_with_5_percent_errors_is_rolled_back_and_an_equal_one_promoted(
        bed: Any, docker_ps: Any, tmp_path: Path) -> None:
    first = _deploy(docker_ps, "--type", "stable", "--build-id", OLD)
    assert first.returncode == 0, first.stderr
    include = bed.include_text()
    assert "log_format ps_json escape=json" in include and "ps_json;" in include
    nginx_t = subprocess.run(bed.nginx.command("-t"), capture_output=True, text=True, check=False)
    assert nginx_t.returncode == 0, nginx_t.stderr
    log = Path(bed.nginx.include).parent / "ps-access.json"

    # 1. every 20th request of the canary answers 500: the judgement rolls it back, with its numbers
    with LoadGenerator(bed.url("web"), rate=100, max_seconds=60, max_requests=6000, timeout=10,
                       ok_status=range(200, 600)) as load:
        bad = _deploy(docker_ps, "--type", "canary-auto", "--build-id", BAD, "--report",
                      str(tmp_path / "bad.json"))
    print(f"load during the bad canary: {load.report().summary()} {load.report().errors[:3]}")
    assert bad.returncode == 1, bad.stderr + bad.stdout
    out = _result(bad)
    print(f"bad canary: {out['message']} (rollback {out['rollback_seconds']}s)")
    assert out["result"] == "rolled-back", out["message"]
    assert out["message"].startswith("judgement at canary 20 %: web: canary 5xx "), out["message"]
    assert "pp > 2 pp" in out["message"] and "rolled back to stable 100 %" in out["message"]
    held = out["judgements"][-1]
    web = held["judgements"][0]
    assert held["action"] == "rollback" and web["errors"]["decision"] == "fail"
    assert 0.02 <= web["canary"]["error_rate"] <= 0.09 and web["stable"]["errors"] == 0
    assert web["errors"]["p_value"] < web["errors"]["alpha"]
    assert web["canary"]["requests"] >= 50 and web["stable"]["requests"] >= 50
    assert log.exists() and log.stat().st_size > 0  # nginx wrote the lines ps judged
    history = _result(docker_ps("--json", "history"))["entries"][-1]
    assert history["result"] == "rolled-back"
    assert history["extra"]["judgements"][-1]["judgements"][0]["errors"]["decision"] == "fail"
    assert (tmp_path / "bad.html").read_text().count('class="judgement"') == 1

    # 2. an equal canary passes the judgement and is promoted; the load sees no failed request
    with LoadGenerator(bed.url("web"), rate=100, max_seconds=90, max_requests=9000, timeout=10) as load:
        good = _deploy(docker_ps, "--type", "canary-auto", "--build-id", GOOD)
        promote = _deploy(docker_ps, "--type", "promote-canary")
    report = load.report()
    print(f"load during the equal canary and its promotion: {report.summary()}")
    assert good.returncode == 0, good.stderr + good.stdout
    out = _result(good)
    print(f"equal canary: {out['message']}")
    assert [j["action"] for j in out["judgements"]] == ["pass"]
    web = out["judgements"][0]["judgements"][0]
    assert web["decision"] == "pass" and web["canary"]["errors"] == 0
    assert web["canary"]["requests"] >= 50 and "judged at 20 % (pass)" in out["message"]
    assert promote.returncode == 0, promote.stderr + promote.stdout
    # the rolled-back canary keeps canary.min_weight (0.1 %) until the equal build replaces it: a 500 of
    # it is the bad build's (1 in 20 of its answers), never a failure of stable or of the equal build
    assert report.sent > 500 and report.failed == len(report.errors) <= 3, report.errors[:5]
    assert all(e.endswith(f"HTTP 500 (canary {BAD})") for e in report.errors), report.errors[:5]


@pytest.fixture
def two_routers(bed: Any, nginx_factory: Callable[..., Any], docker_client: Any) -> Iterator[Any]:
    """The bed with a second router (another nginx in front of the same slots, its own include and JSON
    access log) and a front nginx sending each request to the next router, as a load balancer does."""
    from testbed.nginx import server_block

    second = nginx_factory(server_block(["web"], APP), bed.include_text(), access_log=True)
    servers = "".join(f"        server {n.url.removeprefix('http://')} max_fails=0;\n"
                      for n in (bed.nginx, second))
    front = nginx_factory("    upstream judged_front {\n" + servers + "    }\n"
                          "    server {\n        listen {address}:{port};\n"
                          "        location / { proxy_pass http://judged_front; proxy_next_upstream off; }\n"
                          "    }\n")
    raw = bed.raw
    first = raw.pop("router")
    raw["routers"] = [{"name": "router1", **first},
                      {"name": "router2", "include": str(second.include), "url": second.url,
                       "nginx": {"prefix": str(second.prefix), "conf": str(second.conf),
                                 "error_log": str(second.error_log)}}]
    raw["services"]["web"]["url"] = f"{front.url}/web/"
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    bed.second, bed.front = second, front
    yield bed


def _canary_lines(log: Path, canary: str) -> int:
    """Lines of a router's JSON access log that the canary slot answered."""
    if not log.exists():
        return 0
    return sum(1 for text in log.read_text().splitlines()
               if text.strip() and canary in json.loads(text).get("upstream_addr", ""))


def test_the_same_judgement_is_read_from_two_routers(two_routers: Any, docker_ps: Any) -> None:
    """Load through a front balancer alternating between two routers: the judgement reads both routers'
    access logs (it counts more canary requests than either log holds alone) and rolls the 5 % canary
    back from both routers at once, with 0 failed requests through the front."""
    bed = two_routers
    assert _deploy(docker_ps, "--type", "stable", "--build-id", OLD).returncode == 0
    logs = [Path(n.include).parent / "ps-access.json" for n in (bed.nginx, bed.second)]
    canary = f"{address()}:{bed.ports['web']['canary']}"
    with LoadGenerator(f"{bed.front.url}/web/", rate=100, max_seconds=60, max_requests=6000, timeout=10,
                       ok_status=range(200, 600)) as load:
        bad = _deploy(docker_ps, "--type", "canary-auto", "--build-id", BAD)
    report = load.report()
    print(f"load through the front during the bad canary: {report.summary()}")
    assert bad.returncode == 1, bad.stderr + bad.stdout
    out = _result(bad)
    print(f"judged from two routers: {out['message']}")
    assert out["result"] == "rolled-back" and out["message"].startswith("judgement at canary 20 %: web: "), \
        out["message"]
    web = out["judgements"][-1]["judgements"][0]
    assert web["errors"]["decision"] == "fail" and web["stable"]["errors"] == 0
    per_router = [_canary_lines(log, canary) for log in logs]
    print(f"canary lines per router log: {per_router}; judged canary requests: {web['canary']['requests']}")
    assert min(per_router) > 0, per_router  # the front spread the canary's requests over both routers
    assert max(per_router) < web["canary"]["requests"] <= sum(per_router)
    from pipeline_steps.upstreams import UpstreamFile

    for include in (bed.nginx.include, bed.second.include):  # rolled back on both routers
        upstream = UpstreamFile.load(str(include)).upstreams()[f"{APP}_web".replace("-", "_")]
        weights = {line.address: line.effective_weight for line in upstream.servers}
        assert weights[canary] <= 1 and weights[f"{address()}:{bed.ports['web']['stable']}"] > 900, weights
    assert report.failed == 0, report.errors[:5]


def test_a_slower_canary_inconclusive_then_failed_on_latency_steps_back_gradually(
        bed: Any, docker_ps: Any) -> None:
    """At 50 req/s, 10 % for 8 s is too little traffic (inconclusive, passed by policy); at 40 % the
    canary's +100 ms fails the latency test, and the gradual rollback steps 40 -> 10 -> 0 %, checked at
    each. Nothing fails for the load client: a slow canary still answers."""
    raw = bed.raw
    raw["canary"].update({"steps": [10, 40], "pause": "8s", "rollback": "gradual"})
    # p99 +50 ms fails (the default): a 100 ms slower canary clears it even when stable's p99 is noisy
    raw["canary"]["analysis"].update({"min_requests": 80, "inconclusive": "pass", "max_p99_increase": "50ms"})
    bed.save()
    assert _deploy(docker_ps, "--type", "stable", "--build-id", OLD).returncode == 0
    with LoadGenerator(bed.url("web"), rate=50, max_seconds=90, max_requests=4500, timeout=10) as load:
        slow = _deploy(docker_ps, "--type", "canary-auto", "--build-id", SLOW)
    report = load.report()
    print(f"load during the slow canary: {report.summary()}")
    assert slow.returncode == 1, slow.stderr + slow.stdout
    out = _result(slow)
    print(f"slow canary: {out['message']}")
    assert out["result"] == "rolled-back"
    first, failed, *down = out["judgements"]
    assert first["action"] == "pass" and "inconclusive" in first["judgements"][0]["decision"]
    assert "pass by policy" in first["reason"]
    assert failed["action"] == "rollback" and failed["weight"] == 40
    latency = failed["judgements"][0]["latency"]
    assert latency["decision"] == "fail" and latency["difference"] > 50, latency
    assert failed["judgements"][0]["canary"]["p50_ms"] >= 100
    assert [j["step"] for j in down] == ["rollback 10 %"]
    assert "rolled back to stable 100 % gradually (10 % -> 0 %)" in out["message"]
    assert [d for d in out["decisions"] if "rolling back web gradually: 40 % -> 10 % -> 0 %" in d]
    assert out["weights"] == {"web": 0}
    assert report.sent > 300 and report.failed == 0, report.errors[:5]


def test_nginx_accepts_the_judged_include_with_the_template_server(tmp_path: Path) -> None:
    """`nginx -t` with the include ps writes (analysis on) and pipeline_steps/templates/nginx-server.conf."""
    import shutil

    from pipeline_steps.analysis.include import put_judgement_log
    from pipeline_steps.config import parse_config
    from pipeline_steps.upstreams import initial_file

    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    include = tmp_path / "conf.d" / "ps-upstreams.conf"
    include.parent.mkdir()
    (tmp_path / "logs").mkdir()
    config = parse_config({"app": "shop", "registry": "r.example:5000",
                           "services": {"backend": {"slots": {"stable": 18001, "canary": 18002}}},
                           "router": {"include": str(include)}, "canary": {"analysis": {"enabled": True}}})
    file = initial_file(config, include)
    assert put_judgement_log(config, file)
    include.write_text(file.render())
    template = Path(__file__).resolve().parents[2] / "pipeline_steps" / "templates" / "nginx-server.conf"
    server = template.read_text().replace("listen 80;", f"listen {address()}:18999;")
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"    {k}_temp_path {tmp_path / k};\n" for k in kinds)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"error_log {tmp_path / 'logs' / 'error.log'};\npid {tmp_path / 'logs' / 'nginx.pid'};\n"
                    f"events {{}}\nhttp {{\n{temp}    include {include};\n{server}}}\n")
    done = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    assert "log_format ps_json escape=json" in include.read_text()
