"""The post-deploy watch (`watch:`) in canary-auto, end to end: the bed's Docker engine (docker stats and
logs through the SDK), real nginx, the sample app, a bounded load through nginx.

A canary that logs an `ERROR` line every 10th request while its health endpoint stays green (and every
request answers 200) is caught by the watch and rolled back with 0 failed requests; a canary holding
40 MiB of its 64 MiB limit is caught by the memory check."""

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
APP = unique("watched")
REGISTRY = "ps-test.local"
OLD, NOISY, FAT = "aaaa00000001", "eeee0000err1", "ffff0000mem1"


@pytest.fixture(scope="module")
def builds(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The stable build, a canary logging an ERROR line every 10th request (answering 200 all along),
    and one that holds 40 MiB of memory from its start."""
    images.build_variants(docker_client, base_image, f"{REGISTRY}/{APP}/web",
                          {OLD: "", NOISY: "ENV ERROR_EVERY=10\n", FAT: "ENV ALLOC_MB=40\n"},
                          lambda: tmp_path_factory.mktemp("ctx"))
    yield
    images.remove_images(docker_client, repo_prefix=f"{REGISTRY}/{APP}/")


@pytest.fixture
def bed(traffic_bed: Callable[..., Any], engine: Any, docker_client: Any, builds: None) -> Iterator[Any]:
    made = traffic_bed({"web": "canary"}, app=APP, hosts=[{"name": "local", "docker": engine.base_url,
                                                          "address": address()}])
    raw = made.for_deploys(REGISTRY)
    raw["services"]["web"]["memory"] = "64m"
    raw["canary"] = {"steps": [20], "pause": "20s", "check_interval": "1s", "probe": 0}
    raw["watch"] = {"error_pattern": "ERROR|Exception", "max_error_lines_increase": 5,
                    "memory_max_percent": 50, "cpu_max_percent": 1000}
    made.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    yield made
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
        c.remove(force=True)


def _deploy(ps: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return json_deploy(ps, *args)  # type: ignore[no-any-return]


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return last_json(done.stdout)


def test_a_canary_logging_errors_with_green_health_is_rolled_back_by_the_watch(
        bed: Any, docker_ps: Any, tmp_path: Path) -> None:
    first = _deploy(docker_ps, "--type", "stable", "--build-id", OLD)
    assert first.returncode == 0, first.stderr + first.stdout
    plan = docker_ps("--dry-run", "deploy", "--type", "canary-auto", "--build-id", NOISY)
    assert "watching the canary's containers against stable's at each check" in plan.stdout, plan.stdout

    with LoadGenerator(bed.url("web"), rate=50, max_seconds=60, max_requests=3000, timeout=10) as load:
        noisy = _deploy(docker_ps, "--type", "canary-auto", "--build-id", NOISY, "--report",
                        str(tmp_path / "noisy.json"))
    report = load.report()
    print(f"load during the noisy canary: {report.summary()}")
    assert noisy.returncode == 1, noisy.stderr + noisy.stdout
    out = _result(noisy)
    print(f"noisy canary: {out['message']} (rollback {out['rollback_seconds']}s)")
    assert out["result"] == "rolled-back", out["message"]
    assert out["message"].startswith("judgement at canary 20 %: web: watch: canary "), out["message"]
    assert "unhealthy" not in out["message"] and "rolled back to stable 100 %" in out["message"]
    watch = out["judgements"][-1]["judgements"][0]
    assert watch["kind"] == "watch" and watch["decision"] == "fail"
    # the lines are the canary's own, written during the hold: stable logged none, health stayed green
    assert watch["new"]["error_lines"] > 5 and watch["old"]["error_lines"] == 0
    assert watch["new"]["error_lines_per_minute"] - watch["old"]["error_lines_per_minute"] > 5
    assert watch["new"]["memory_percent"] is not None and watch["new"]["memory_percent"] < 50
    assert watch["new"]["cpu_percent"] is not None  # two one-shot samples of docker stats by then
    assert out["weights"] == {"web": 0}
    history = _result(docker_ps("--json", "history"))["entries"][-1]
    assert history["extra"]["judgements"][-1]["judgements"][0]["kind"] == "watch"
    data = json.loads((tmp_path / "noisy.json").read_text())
    assert data["extra"]["watch"][-1]["decision"] == "fail"
    # the load ran across the canary step (the noisy canary answered some), and no request failed
    assert report.sent > 100 and report.failed == 0, report.errors[:5]
    assert set(report.by_slot) == {"stable", "canary"}, report.by_slot


def test_a_canary_over_its_memory_share_is_caught(bed: Any, docker_ps: Any) -> None:
    assert _deploy(docker_ps, "--type", "stable", "--build-id", OLD).returncode == 0
    fat = _deploy(docker_ps, "--type", "canary-auto", "--build-id", FAT)
    assert fat.returncode == 1, fat.stderr + fat.stdout
    out = _result(fat)
    print(f"fat canary: {out['message']}")
    assert out["result"] == "rolled-back", out["message"]
    assert "canary memory " in out["message"] and "of its limit (stable " in out["message"]
    assert "> 50 %" in out["message"]
    watch = out["judgements"][-1]["judgements"][0]
    assert watch["new"]["memory_percent"] > 50 and watch["old"]["memory_percent"] < 20
    assert watch["new"]["memory_bytes"] >= 40 << 20
    assert out["weights"] == {"web": 0}


def _labels(docker_client: Any, container: str) -> dict[str, str]:
    return dict(docker_client.containers.get(container).labels)


def test_a_promoted_build_logging_errors_is_watched_and_the_previous_build_put_back(
        bed: Any, docker_ps: Any, docker_client: Any) -> None:
    """canary-manual puts the noisy build in the canary at 1 %; promote-canary makes it stable; the watch
    after the promotion sees its error lines against the previous stable's (none) and redeploys the
    previous stable build through the canary slot, with 0 failed requests."""
    from pipeline_steps.adapters.slots import LABEL_BUILD_ID

    bed.raw["watch"].update({"duration": "20s", "interval": "2s"})
    bed.save()
    assert _deploy(docker_ps, "--type", "stable", "--build-id", OLD).returncode == 0
    manual = _deploy(docker_ps, "--type", "canary-manual", "--weight", "1", "--build-id", NOISY)
    assert manual.returncode == 0, manual.stderr + manual.stdout
    plan = docker_ps("--dry-run", "deploy", "--type", "promote-canary")
    assert "watch stable 20s" in plan.stdout, plan.stdout
    with LoadGenerator(bed.url("web"), rate=50, max_seconds=120, max_requests=6000, timeout=10) as load:
        promote = _deploy(docker_ps, "--type", "promote-canary")
    report = load.report()
    print(f"load during the watched promotion: {report.summary()}")
    assert promote.returncode == 1, promote.stderr + promote.stdout
    out = _result(promote)
    print(f"watched promotion: {out['message']}")
    assert out["result"] == "rolled-back", out["message"]
    assert out["message"].startswith("watch of stable: web: watch: stable "), out["message"]
    assert "vs before (stable) 0 (0.0/min)" in out["message"]
    assert f"rolled back to the previous stable build (web {OLD}, through the canary slot)" in out["message"]
    for slot in ("stable", "canary"):
        assert _labels(docker_client, f"{APP}-web-{slot}")[LABEL_BUILD_ID] == OLD
    assert out["judgements"][-1]["step"] == "stable watch"
    # the load ran across the change: it reached the promoted build, and no request failed
    assert report.sent > 100 and report.failed == 0, report.errors[:5]
    assert set(report.by_slot) == {"stable", "canary"}, report.by_slot


@pytest.fixture
def bg_bed(traffic_bed: Callable[..., Any], engine: Any, docker_client: Any, builds: None) -> Iterator[Any]:
    made = traffic_bed({"web": "blue-green"}, app=APP, hosts=[{"name": "local", "docker": engine.base_url,
                                                              "address": address()}])
    raw = made.for_deploys(REGISTRY)
    raw["canary"] = {"check_interval": "1s", "probe": 0}
    raw["watch"] = {"error_pattern": "ERROR|Exception", "max_error_lines_increase": 5, "duration": "20s",
                    "interval": "2s"}
    made.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    yield made
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
        c.remove(force=True)


def test_blue_green_watch_switches_back_from_a_color_logging_errors(bg_bed: Any, docker_ps: Any) -> None:
    first = _deploy(docker_ps, "--type", "blue-green", "--build-id", OLD)
    assert first.returncode == 0, first.stderr + first.stdout
    before = _result(first)["active"]["web"]
    with LoadGenerator(bg_bed.url("web"), rate=50, max_seconds=90, max_requests=4500, timeout=10) as load:
        noisy = _deploy(docker_ps, "--type", "blue-green", "--build-id", NOISY)
    report = load.report()
    print(f"load during the noisy color: {report.summary()}")
    assert noisy.returncode == 1, noisy.stderr + noisy.stdout
    out = _result(noisy)
    print(f"noisy color: {out['message']}")
    assert out["result"] == "rolled-back", out["message"]
    assert " error lines (" in out["message"] and f"vs before ({before}) 0" in out["message"]
    assert f"switched back to {before}" in out["message"] and out["active"] == {"web": before}
    # the load ran across the switch and the switch back (both colors answered), and no request failed
    assert report.sent > 100 and report.failed == 0, report.errors[:5]
    assert set(report.by_slot) == {"blue", "green"}, report.by_slot
