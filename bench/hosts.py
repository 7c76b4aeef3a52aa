"""Does a deploy to 4 hosts take about as long as to 1? (issue 12: deploy-env and gates on all hosts at once)

`ps deploy --type stable` (canary slot, its gate, weights, stable slot, its gate, weights back, verify,
prune) of one service to 1, 2 and 4 Docker hosts, in the same run: host 1 is the bed's engine, the others
are dockerds of their own (testbed.engine.start_dockerd, each with its own bridge, as the tests' second
host), each host's slots on a loopback address of its own. The hard case: the sample app answers 503
`{"status":"starting"}` for HEALTHY_AFTER seconds after every start, so each gate waits for every host's
boot. A router per host (`routers:`): an nginx for each host listing only that host's slots, so every
traffic change of the deploy is written, tested and reloaded on 1, 2 or 4 routers at once. Also 4 hosts
with `parallel_hosts: 1` (one host after the other, as before)
to show what the pool buys. The runs are interleaved in rounds (1, 2, 4, 4 one by one; then 2, 4, ...: the
order turns each round) so load from other work on the machine hits all alike; the figure is the median
over the rounds of each round's time against that round's 1 host.
Goal: 4 hosts <= 1.3x 1 host.

Run from the repo root: .venv/bin/python bench/hosts.py [--reps N] [--boot SECONDS]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.bench import write_result  # noqa: E402
from testbed.deploy_bed import REGISTRY, DeployBed, start_deploy_bed  # noqa: E402
from testbed.engine import Engine, private_bridge, start_dockerd  # noqa: E402
from testbed.nginx import server_block, start_nginx  # noqa: E402
from testbed.ports import CLAIM_PORT, address, second_address  # noqa: E402

GOAL = 1.3
BUILDS = ("a1a1a0000001", "b2b2b0000002")
CASES = (("1 host", 1, 4), ("2 hosts", 2, 4), ("4 hosts", 4, 4), ("4 hosts one by one", 4, 1))
_held: list[socket.socket] = []


def more_addresses(n: int) -> list[str]:
    """`n` loopback addresses besides the run's pair, each claimed as testbed.ports claims its pair."""
    found: list[str] = []
    rng = random.Random()
    while len(found) < n:
        candidate = f"127.{rng.randint(16, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 253)}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((candidate, CLAIM_PORT))
            sock.listen(1)
        except OSError:
            sock.close()
            continue
        _held.append(sock)
        found.append(candidate)
    return found


def extra_engine(stack: ExitStack) -> Engine:
    """A dockerd of its own (own socket, data root, bridge), stopped when `stack` closes."""
    bridge = stack.enter_context(private_bridge())
    root = Path(tempfile.mkdtemp(prefix="ps-bench-dockerd-"))
    engine = start_dockerd(root, bridge=bridge, extra_args=["--iptables=false", "--ip-masq=false"])
    stack.callback(engine.stop)
    return engine


def copy_images(bed: DeployBed, engines: list[Engine]) -> None:
    """The bed's builds, under their tags, into every other engine (as a registry pull would)."""
    tags = [f"{REGISTRY}/{bed.app}/{service}:{build}" for service in bed.slots for build in BUILDS]
    for engine in engines:
        client = engine.client()
        try:
            for tag in tags:
                client.images.load(b"".join(bed.client.images.get(tag).save(named=tag)))
        finally:
            client.close()


def drop_containers(bed: DeployBed, engines: list[Engine]) -> None:
    for engine in engines:
        client = engine.client()
        try:
            for c in client.containers.list(all=True, filters={"label": f"pipeline-steps.app={bed.app}"}):
                c.remove(force=True)
        finally:
            client.close()


def make_bed(others: list[tuple[Engine, str]], parallel: int, boot: float, stack: ExitStack) -> DeployBed:
    """A deploy bed whose ps.yaml lists its own engine (host 1, the run's address) and `others` (engine,
    address), a router per host, `parallel_hosts: parallel`, the app answering 503 for `boot` seconds
    after each start."""
    bed = start_deploy_bed({"web": "canary"})
    for build in BUILDS:
        bed.build(build)
    copy_images(bed, [e for e, _ in others])
    raw = yaml.safe_load(bed.config_path.read_text())
    hosts = [(bed.engine.base_url, address())] + [(e.base_url, addr) for e, addr in others]
    raw["hosts"] = [{"name": f"app{n}", "docker": docker, "address": addr}
                    for n, (docker, addr) in enumerate(hosts, start=1)]
    raw["parallel_hosts"] = parallel
    first = raw.pop("router")
    routers = [{"name": "router1", **first, "hosts": ["app1"]}]
    for n in range(2, len(hosts) + 1):  # hosts 2..N: an nginx each (ps rewrites its include at once)
        nginx = start_nginx(server_block(bed.slots, bed.app), bed.nginx.include.read_text())
        stack.callback(nginx.stop)
        routers.append({"name": f"router{n}", "include": str(nginx.include), "url": nginx.url,
                        "hosts": [f"app{n}"], "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                                                        "error_log": str(nginx.error_log)}})
    raw["routers"] = routers
    web = raw["services"]["web"]
    web["env"] = {"HEALTHY_AFTER": f"{boot:g}"}
    web["health"]["retries"] = 300  # 30 s at 100 ms: never the limit, even on a loaded machine
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return bed


def deploy(bed: DeployBed, build: str) -> float:
    """Seconds of one `ps deploy --type stable` (a failure aborts the bench)."""
    started = time.perf_counter()
    done = bed.ps("deploy", "--type", "stable", "--build-id", build, "--no-notify")
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ps deploy --build-id {build} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="timed deploys per case (default 3)")
    parser.add_argument("--boot", type=float, default=2.0, help="seconds the app answers 503 (default 2)")
    args = parser.parse_args()
    with ExitStack() as stack:
        engines = [extra_engine(stack) for _ in range(3)]
        addresses = [second_address(), *more_addresses(2)]  # hosts 2 to 4 (host 1: the run's address)
        beds: dict[str, tuple[DeployBed, list[Engine]]] = {}
        try:
            for name, count, parallel in CASES:
                others = list(zip(engines[:count - 1], addresses, strict=False))
                bed = make_bed(others, parallel, args.boot, stack)
                beds[name] = (bed, [e for e, _ in others])
                deploy(bed, BUILDS[0])  # the live world before the timed runs: stable and canary on B1
            times: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
            for rep in range(max(1, args.reps)):
                build = BUILDS[(rep + 1) % 2]
                order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]  # a rising load hits each alike
                for name, _, _ in order:
                    took = deploy(beds[name][0], build)
                    times[name].append(took)
                    print(f"  {name}: {took:.2f} s", flush=True)
        finally:
            for bed, extra in beds.values():
                drop_containers(bed, extra)
                bed.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    # each round measures every case within a minute: the ratio to that round's 1 host, then the median
    ratios = {name: round(statistics.median(t / b for t, b in zip(ts, times["1 host"], strict=True)), 3)
              for name, ts in times.items()}
    result: dict[str, Any] = {
        "figure": "ps deploy --type stable wall time, N hosts with a router each / 1 host and its router "
                  "(median of the rounds' ratios), app 503 while it boots",
        "boot_s": args.boot, "reps": args.reps,
        "median_s": {name: round(m, 3) for name, m in medians.items()},
        "ratio": ratios, "goal": GOAL, "met": ratios["4 hosts"] <= GOAL,
        "times_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = write_result("hosts", result)
    print("RESULT hosts: ps deploy --type stable, medians of "
          f"{args.reps} rounds: " + ", ".join(f"{n} {medians[n]:.2f} s ({ratios[n]:.2f}x)" for n in medians)
          + f" (goal 4 hosts <= {GOAL}x) {'MET' if result['met'] else 'NOT MET'} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
