"""Zero dropped requests: a bounded 100 req/s load through nginx while weights flip with reloads.

Baseline: the same load through the same nginx with nothing changing. Figure: failed requests under
repeated weight flips (each one `ps set-weights`, i.e. include rewrite + `nginx -s reload`) and the
p99 latency ratio flips/baseline. Writes bench/results/zero_downtime.json.

Run from the repo root: .venv/bin/python bench/zero_downtime.py [--seconds 8] [--rate 100]
The lead extends this to full `ps deploy --type ...` runs.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed import images  # noqa: E402
from testbed.engine import ensure_engine  # noqa: E402
from testbed.load import LoadGenerator, LoadReport  # noqa: E402
from testbed.nginx import Nginx, start_nginx  # noqa: E402
from testbed.ports import unique, wait_port  # noqa: E402

APP, SERVICE = "zdbench", "web"
UPSTREAM = f"{APP}_{SERVICE}"
BUILD_ID = "be0c0000beef"
SERVERS = """
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_pass http://UPSTREAM;
{proxy_defaults}
    }
}
""".replace("UPSTREAM", UPSTREAM)
WEIGHT_CYCLE = (10, 50, 90, 100, 0)


def plain_upstream(ports: dict[str, int], canary_pct: int) -> str:
    """The include without ps (fallback): stable and canary lines, weight 0 written as `down`."""
    lines = []
    for slot, weight in (("stable", 100 - canary_pct), ("canary", canary_pct)):
        lines.append(f"    server 127.0.0.1:{ports[slot]}" + (f" weight={weight};" if weight else " down;"))
    return f"upstream {UPSTREAM} {{\n" + "\n".join(lines) + "\n}\n"


Flipper = Callable[[int], None]


def make_flipper(nginx: Nginx, ports: dict[str, int], workdir: Path) -> tuple[str, Flipper, str]:
    """A function setting the canary percent: `ps set-weights` in-process when it exists, else a
    plain include rewrite and reload. Returns (how, flip, initial include text)."""
    try:
        set_weights = importlib.import_module("pipeline_steps.steps.set_weights").set_weights
        from pipeline_steps.config import parse_config
        from pipeline_steps.upstreams import initial_file

        config = parse_config({
            "app": APP, "registry": "127.0.0.1:5000", "timezone": "UTC", "state_dir": str(workdir / "state"),
            "services": {SERVICE: {"context": str(images.SAMPLE_APP), "slots": dict(ports)}},
            "router": {"include": str(nginx.include),
                       "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf)}},
        }, "bench-ps.yaml", workdir)
        initial = initial_file(config, nginx.include).render()

        def flip_ps(pct: int) -> None:
            set_weights(config, float(pct), [SERVICE])

        return "ps set-weights", flip_ps, initial
    except (ImportError, AttributeError) as exc:
        print(f"ps set-weights unavailable ({exc}); flipping by include rewrite + nginx -s reload")

    def flip_plain(pct: int) -> None:
        nginx.include.write_text(plain_upstream(ports, pct))
        nginx.reload()

    return "include rewrite + nginx -s reload", flip_plain, plain_upstream(ports, 0)


def run_load(url: str, rate: float, seconds: float, during: Callable[[float], int] | None = None) -> tuple[
        LoadReport, int]:
    """Load for `seconds`; `during(deadline)` runs meanwhile and returns how many changes it made."""
    load = LoadGenerator(url, rate=rate, max_seconds=seconds).start()
    changes = during(time.monotonic() + seconds - 0.5) if during else 0
    return load.wait(timeout=seconds + 30), changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase (max 120)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (max 300)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between weight flips")
    args = parser.parse_args()
    seconds, rate = min(max(args.seconds, 1.0), 120.0), min(max(args.rate, 1.0), 300.0)

    engine = ensure_engine()
    client = engine.client()
    containers: list[Any] = []
    nginx: Nginx | None = None
    workdir = Path(tempfile.mkdtemp(prefix="ps-bench-zd-"))
    try:
        base = images.ensure_base_image(client)
        tag = f"pipeline-steps/sample-app:{BUILD_ID}"
        client.images.build(path=str(images.SAMPLE_APP), tag=tag, rm=True,
                            buildargs={"BUILD_ID": BUILD_ID, "BASE_IMAGE": base})
        from testbed.ports import free_ports

        ports = dict(zip(("stable", "canary"), free_ports(2), strict=True))
        for slot, port in ports.items():
            containers.append(client.containers.run(
                tag, detach=True, name=unique(f"pst-zd-{slot}-"), environment={"PS_SLOT": slot},
                ports={"80/tcp": ("127.0.0.1", port)}, labels={"pipeline-steps.test": "1"}))
            if not wait_port(port, timeout=15):
                raise RuntimeError(f"sample app ({slot}) did not listen on {port}")
        nginx = start_nginx(SERVERS, plain_upstream(ports, 0))
        how, flip, initial = make_flipper(nginx, ports, workdir)
        nginx.include.write_text(initial)
        nginx.reload()
        url = nginx.url + "/bench"
        warm = LoadGenerator(url, rate=20, max_requests=20, max_seconds=5).start().wait(timeout=30)
        if warm.failed:
            raise RuntimeError(f"bed not ready: {warm.summary()} {warm.errors[:3]}")

        baseline, _ = run_load(url, rate, seconds)
        print(f"baseline (no changes): {baseline.summary()}, p99 {baseline.latency_ms['p99']}ms")

        def flipping(deadline: float) -> int:
            count = 0
            for pct in itertools.cycle(WEIGHT_CYCLE):
                if time.monotonic() >= deadline:
                    return count
                flip(pct)
                count += 1
                time.sleep(args.interval)
            return count

        flipped, flips = run_load(url, rate, seconds, flipping)
        print(f"{flips} weight flips via {how}: {flipped.summary()}, p99 {flipped.latency_ms['p99']}ms")
        base_p99 = baseline.latency_ms["p99"]
        ratio = flipped.latency_ms["p99"] / base_p99 if base_p99 else 0.0
        result = {
            "figure": "zero_downtime",
            "rate": rate, "seconds": seconds, "flip_interval": args.interval, "flip_method": how,
            "flips": flips,
            "sent": flipped.sent, "failed": flipped.failed,
            "baseline_sent": baseline.sent, "baseline_failed": baseline.failed,
            "p99_latency_ratio": round(ratio, 3),
            "baseline": baseline.as_dict(), "with_flips": flipped.as_dict(),
        }
        out = REPO / "bench" / "results" / "zero_downtime.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"RESULT zero_downtime: {flipped.sent} requests at {rate:g}/s during {flips} nginx reloads, "
              f"{flipped.failed} failed (baseline {baseline.sent} sent, {baseline.failed} failed); "
              f"p99 latency x{ratio:.2f} of baseline -> {out.relative_to(REPO)}")
        return 0 if flipped.failed == 0 and baseline.failed == 0 else 1
    finally:
        if nginx is not None:
            nginx.stop()
        for container in containers:
            try:
                container.remove(force=True)
            except Exception:
                pass
        client.close()
        engine.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
