"""`ps traffic status`: the split, active color, backup and the BUILD_ID behind each server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

TrafficBed = Any  # the traffic_bed fixture of tests/integration/conftest.py


def test_traffic_status_shows_split_and_builds(traffic_bed: Callable[..., TrafficBed], docker_ps: Any,
                                              docker_client: Any, sample_image: str) -> None:
    bed = traffic_bed({"backend": "canary", "web": "blue-green"}, app="tr" + bed_suffix())
    app = bed.raw["app"]
    repo = f"127.0.0.1:5999/{app}/backend"
    docker_client.images.get(sample_image).tag(repo, "b1")
    docker_client.images.get(sample_image).tag(repo, "b2")
    try:
        for slot, build in (("stable", "b1"), ("canary", "b2")):
            done = docker_ps("deploy-env", "--slot", slot, "--service", "backend", "--build-id", build)
            assert done.returncode == 0, done.stderr
        assert docker_ps("set-weights", "--canary", "10").returncode == 0
        assert docker_ps("switch", "--to", "green").returncode == 0
        done = docker_ps("--json", "traffic", "status")
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout.strip().splitlines()[-1])
        by_name = {s["service"]: s for s in record["services"]}
        assert by_name["backend"]["split"] == {"stable": 90.0, "canary": 10.0}
        builds = {s["slot"]: s["build_id"] for s in by_name["backend"]["servers"]}
        assert builds == {"stable": "b1", "canary": "b2"}
        assert by_name["web"]["active"] == "green" and by_name["web"]["backup"] == ["blue"]
        human = docker_ps("traffic", "status")
        assert "backend (upstream " in human.stdout and "canary 10 %" in human.stdout
    finally:
        for slot in ("stable", "canary"):
            try:
                docker_client.containers.get(f"{app}-backend-{slot}").remove(force=True)
            except Exception:
                pass
        for tag in ("b1", "b2"):
            docker_client.images.remove(f"{repo}:{tag}")


def bed_suffix() -> str:
    from testbed.ports import unique

    return unique("")
