"""Benchmark: `ps set-weights` / `ps switch` vs a raw `nginx -t && nginx -s reload`, and the measured split.

Run from the repo root: .venv/bin/python bench/switch.py
Goals: each ps command <= 3x the raw reload (ratio of medians) and under 300 ms; the split measured over
2000 requests through nginx within 1 percentage point of 10/40/70 %.

A raw `nginx -s reload` returns once the signal is sent; ps returns once the reload is proven (new workers
run, the old ones say "shutting down", no [emerg]), and nginx's master itself waits about 100 ms before it
tells the old workers to stop. So a second baseline is measured too: the raw reload followed by waiting
for that hand-over, read from /proc the way an operator's script would.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pipeline_steps.config import load_config, parse_config  # noqa: E402
from pipeline_steps.operations.verify_weights import verify_weights  # noqa: E402
from pipeline_steps.upstreams import initial_file  # noqa: E402
from testbed import images  # noqa: E402
from testbed.bench import write_result  # noqa: E402
from testbed.engine import ensure_engine  # noqa: E402
from testbed.nginx import server_block, start_nginx  # noqa: E402
from testbed.ports import address, free_ports, unique, wait_port  # noqa: E402

RUNS = 15
REQUESTS = 2000


def _median_ms(fn: object, runs: int = RUNS) -> float:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.2)  # let the old workers go (outside the timing)
    return statistics.median(times)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ps-bench-switch-"))
    stable, canary, blue, green = free_ports(4)
    raw = {"app": unique("bs"), "registry": "127.0.0.1:5999", "state_dir": str(work / "state"),
           "hosts": [{"name": "local", "address": address()}],
           "services": {"backend": {"context": ".", "slots": {"stable": stable, "canary": canary}},
                        "web": {"context": ".", "slots": {"blue": blue, "green": green}}}}
    first = parse_config({**raw, "router": {"include": "ups.conf"}}, base_dir=work)
    nginx = start_nginx(server_block(("backend", "web"), str(raw["app"])),
                        initial_file(first, work / "ups.conf").render())
    engine = ensure_engine()
    client = engine.client()
    containers = []
    try:
        base = images.ensure_base_image(client)
        tag = "pipeline-steps/sample-app:bench"
        client.images.build(path=str(images.SAMPLE_APP), tag=tag, rm=True,
                            buildargs={"BUILD_ID": "bench", "BASE_IMAGE": base})
        for slot, port in (("stable", stable), ("canary", canary)):
            containers.append(client.containers.run(tag, detach=True, name=unique("ps-bench-"),
                                                    environment={"PS_SLOT": slot},
                                                    ports={"80/tcp": (address(), port)}))
            wait_port(port, timeout=15)
        raw["router"] = {"include": str(nginx.include), "url": nginx.url,
                         "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                                   "error_log": str(nginx.error_log)}}
        cfg_path = work / "ps.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        env = {**os.environ, "PYTHONPATH": str(REPO), "PS_CONFIG": str(cfg_path)}

        def raw_reload(_: int) -> None:
            subprocess.run(nginx.command("-t", "-q"), check=True, capture_output=True)
            subprocess.run(nginx.command("-s", "reload"), check=True, capture_output=True)

        def workers() -> set[int]:
            master = nginx.master_pid()
            found = set()
            for entry in Path("/proc").iterdir():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if entry.name.isdigit() and int(stat.rpartition(")")[2].split()[1]) == master:
                    found.add(int(entry.name))
            return found

        def handed_over(old: set[int]) -> bool:
            for pid in old:
                try:
                    if b"shutting down" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return False
                except OSError:
                    continue
            return True

        def raw_reload_confirmed(_: int) -> None:
            old = workers()
            raw_reload(0)
            while not (workers() - old and handed_over(old)):
                time.sleep(0.005)

        def ps(*args: str) -> None:
            subprocess.run([sys.executable, "-m", "pipeline_steps", *args], check=True, capture_output=True,
                           env=env)

        baseline = _median_ms(raw_reload)
        confirmed = _median_ms(raw_reload_confirmed)
        set_ms = _median_ms(lambda i: ps("set-weights", "--canary", "10" if i % 2 else "40"))
        switch_ms = _median_ms(lambda i: ps("switch", "--to", "green" if i % 2 else "blue"))
        config = load_config(cfg_path)
        from pipeline_steps.operations.set_weights import set_weights

        inproc_ms = _median_ms(lambda i: set_weights(config, 10 if i % 2 else 40))
        split: dict[str, float] = {}
        for pct in (10, 40, 70):
            ps("set-weights", "--canary", str(pct))
            result = verify_weights(config, expect_canary=pct, probe=REQUESTS,
                                    url=f"{nginx.url}/backend/", services=["backend"])
            split[str(pct)] = round(100 * result.services[0]["measured"]["share"], 2)
        worst = max(abs(split[k] - int(k)) for k in split)
        figures = {
            "baseline_ms": round(baseline, 1), "set_weights_ms": round(set_ms, 1),
            "switch_ms": round(switch_ms, 1), "set_weights_in_process_ms": round(inproc_ms, 1),
            "set_weights_in_process_ratio": round(inproc_ms / baseline, 2),
            "set_weights_ratio": round(set_ms / baseline, 2), "switch_ratio": round(switch_ms / baseline, 2),
            "confirmed_reload_ms": round(confirmed, 1),
            "set_weights_vs_confirmed": round(set_ms / confirmed, 2),
            "switch_vs_confirmed": round(switch_ms / confirmed, 2),
            "split_percent": split, "split_worst_pp": round(worst, 2), "requests": REQUESTS, "runs": RUNS,
            "goals": {"ratio": 3.0, "absolute_ms": 300, "split_pp": 1.0},
        }
        figures["ok"] = (figures["set_weights_ratio"] <= 3 and figures["switch_ratio"] <= 3
                         and set_ms < 300 and switch_ms < 300 and worst <= 1.0)
        write_result("switch", figures)
        print(f"switch: raw reload + hand-over {confirmed:.0f} ms: set-weights "
              f"{figures['set_weights_vs_confirmed']}x, switch {figures['switch_vs_confirmed']}x")
        print(f"switch: raw nginx -t && reload {baseline:.0f} ms; ps set-weights {set_ms:.0f} ms "
              f"({figures['set_weights_ratio']}x; in-process {inproc_ms:.0f} ms, "
              f"{figures['set_weights_in_process_ratio']}x), "
              f"ps switch {switch_ms:.0f} ms ({figures['switch_ratio']}x); "
              f"split over {REQUESTS} requests {split} (worst {worst:.2f} pp) -> "
              f"{'ok' if figures['ok'] else 'MISSED'}")
    finally:
        for c in containers:
            c.remove(force=True)
        client.close()
        nginx.stop()


if __name__ == "__main__":
    main()
