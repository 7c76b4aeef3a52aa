"""Acceptance test of issue 9: the core promise under real conditions.

Three services (frontend, backend, python) behind a hand-written nginx.conf (`/`, `/api`, `/py`; the
upstream blocks come from ps's include file), each with stable/canary slots, under >= 75 req/s of
keep-alive load spread over the three locations, driven through the real `ps` CLI phase by phase:

1. a first stable deploy with no canary container;   5. promote-canary;
2. stable with a stopped canary;                      6. a bad canary (503 a few seconds in), without and
3. canary-manual;                                        with health.logs_fallback: rolled back, exit 1,
4. canary-auto with the probe on;                        back on stable within check_interval + a reload;
                                                      7. rollback --to previous;
8. blue-green (a second ps.yaml: the same services and upstreams on blue/green slots): onto blue, then a
   green that fails right after the switch: traffic back on blue, exit 1.

Every phase: 0 failed requests (testbed/keepalive_load.py says what counts as failed); the report prints
per phase what was sent, failed and answered by which slot.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import images
from testbed.keepalive_load import KeepAliveLoad, KeepAliveReport, Route
from testbed.nginx import Nginx
from testbed.ports import address, free_ports, unique
from testbed.site import LOCATIONS, start_site

pytestmark = [pytest.mark.docker, pytest.mark.slow]

APP = unique("site")
REGISTRY = "ps-accept.local"
SERVICES = tuple(LOCATIONS)  # frontend, backend, python
RATE = 90.0  # requests per second over the three locations (the issue asks >= 75)
MIN_RATE = 75.0
CHECK_INTERVAL = 0.2
# Time from "canary unhealthy" to "traffic on stable" may be check_interval + one reload + MARGIN. The margin
# covers, on a loaded 2-core machine: the failed check's own round trip to a busybox app that forks sh per
# request (~0.1-0.3 s under load), ps writing the include and running `nginx -t` + reload from Python
# (0.13 s unloaded, bench/canary.py), nginx handing over to the new worker (~0.1 s, bench/switch.py) while
# the old one finishes requests in flight, and the load's own resolution (~1/45 s between canary answers
# at 50 %). A probe that blinds the hold costs seconds (issue 9, case 5), well beyond this margin.
MARGIN = 1.0
PROBE = 150  # canary.probe in phase 4
PROBE_HOLD = 300  # canary.probe in phase 6: a hold the probe blinds misses the bound by seconds
BAD = "backend"  # the service whose canary turns unhealthy in phase 6


@dataclass
class Phase:
    """What one phase saw."""

    name: str
    exit_code: int
    seconds: float
    load: KeepAliveReport
    ps_ended: float  # time.monotonic() when ps returned
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"phase {self.name}: ps exit {self.exit_code} in {self.seconds:.1f}s{extra}; "
                f"{self.load.summary()}")


@dataclass
class Site:
    """nginx with the hand-written conf, the two ps.yaml files, the slot ports, and the ps runner."""

    nginx: Nginx
    workdir: Path
    ps: Any  # tests.conftest.PsRun
    client: Any
    canary_raw: dict[str, Any]
    bg_raw: dict[str, Any]
    ports: dict[str, dict[str, int]]
    phases: list[Phase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _poll: threading.Event = field(default_factory=threading.Event)  # never set: a poll's step

    def check(self, ok: bool, what: str) -> None:
        """Record a failed expectation; the test goes on to the next phase and fails at the end."""
        if not ok:
            self.failures.append(what)
            print(f"  FAILED: {what}")

    def routes(self) -> list[Route]:
        return [Route(s, LOCATIONS[s].rstrip("/") + "/",
                      {f"{address()}:{port}": slot for slot, port in self.ports[s].items()})
                for s in SERVICES]

    def write(self, **canary: Any) -> None:
        """ps.yaml: the canary config with these `canary:` overrides (and `logs_fallback=` for health)."""
        raw = json.loads(json.dumps(self.canary_raw))
        logs = canary.pop("logs_fallback", None)
        raw["canary"].update(canary)
        if logs:
            for svc in raw["services"].values():
                svc["health"]["logs_fallback"] = logs
        (self.workdir / "ps.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def weights(self) -> dict[str, list[tuple[str, int, bool]]]:
        """Per service, the live include's servers: (slot, weight, takes regular traffic)."""
        from pipeline_steps.upstreams import UpstreamFile

        by_port = {f"{address()}:{p}": (s, slot) for s, slots in self.ports.items()
                   for slot, p in slots.items()}
        out: dict[str, list[tuple[str, int, bool]]] = {s: [] for s in SERVICES}
        for name, ups in UpstreamFile.load(self.nginx.include).upstreams().items():
            for server in ups.servers:
                svc, slot = by_port.get(server.address, (name, "?"))
                if svc in out:
                    out[svc].append((slot, server.effective_weight, not server.backup and not server.down))
        return out

    def canary_percent(self, service: str) -> float:
        """The canary's share of the service's regular traffic in the live include, in percent."""
        live = [(slot, w) for slot, w, regular in self.weights()[service] if regular]
        total = sum(w for _, w in live)
        return 100.0 * sum(w for slot, w in live if slot == "canary") / total if total else 0.0

    def container(self, service: str, slot: str) -> Any | None:
        import docker.errors

        try:
            return self.client.containers.get(f"{APP}-{service}-{slot}")
        except docker.errors.NotFound:
            return None

    def running_build(self, service: str, slot: str) -> str | None:
        c = self.container(service, slot)
        if c is None:
            return None
        c.reload()
        return c.labels.get("pipeline-steps.build-id") if c.status == "running" else None

    def phase(self, name: str, *args: str, config: str = "ps.yaml",
              during: Callable[[KeepAliveLoad], Any] | None = None,
              tail: int = 45) -> tuple[Phase, subprocess.CompletedProcess[str]]:
        """Run `ps --config CONFIG --json ARGS` under the keep-alive load (plus `during(load)` alongside);
        the load goes on for `tail` more answers after ps returned, then stops. After it, the site must
        answer cleanly again before the next phase (damage that outlasts ps is charged to this phase)."""
        with KeepAliveLoad(self.nginx.port, self.routes(), rate=RATE, max_seconds=120, timeout=5.0) as load:
            load.wait_more(15)  # the load runs before ps starts
            helper: threading.Thread | None = None
            if during is not None:
                helper = threading.Thread(target=during, args=(load,), daemon=True)
                helper.start()
            started = time.monotonic()
            done = self.ps("--config", config, "--json", *args, timeout=300)
            seconds = time.monotonic() - started
            if helper is not None:
                helper.join(30)
            ended = time.monotonic()
            load.wait_more(tail)
        phase = Phase(name, done.returncode, seconds, load.report(), ended)
        self.phases.append(phase)
        print(phase.line())
        if done.returncode != 0 or phase.load.failed:
            print(f"  ps said:\n{done.stderr[-3000:]}")
        self.settle(name)
        return phase, done


    def settle(self, after: str, window: int = 30, limit: float = 20.0) -> None:
        """Wait until `window` answers in a row are good (at most `limit` s); failures on the way are
        charged to phase `after`: its damage outlasted ps."""
        with KeepAliveLoad(self.nginx.port, self.routes(), rate=RATE, max_seconds=limit) as load:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                records = load.report().records
                if len(records) >= window and all(r.error is None for r in records[-window:]):
                    break
                self._poll.wait(0.05)
        rep = load.report()
        self.check(rep.failed == 0, f"after phase {after}: {rep.failed} of {rep.sent} more requests failed "
                   f"in the {rep.duration:.1f}s until the site answered cleanly again: {rep.errors(3)}")


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        return {}


def _raw_reload(nginx: Nginx) -> float:
    """One `nginx -t && nginx -s reload` of the site (the floor any tool pays for a reload)."""
    start = time.monotonic()
    subprocess.run(nginx.command("-t"), check=True, capture_output=True)
    subprocess.run(nginx.command("-s", "reload"), check=True, capture_output=True)
    return time.monotonic() - start


def _back_on(report: KeepAliveReport, since: float, slot: str = "stable", run: int = 20) -> float | None:
    """The send time (monotonic) of the first request after `since` that starts a run of `run` answers in
    a row all from `slot` (at 50 % canary a chance run of 20 has odds 1e-6); None if there is none."""
    later = [r for r in report.records if report.started + r.t >= since]
    for i in range(len(later) - run + 1):
        if all(r.error is None and r.slot == slot for r in later[i:i + run]):
            return report.started + later[i].t
    return None


# ---------------------------------------------------------------- the bed


@pytest.fixture
def builds(docker_client: Any, base_image: str, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """`build("b1", FAIL_AFTER=3)`: the sample app as <registry>/<app>/<service>:b1 for every service."""

    def build(build_id: str, **env: str) -> None:
        ctx = images.copy_sample_app(tmp_path / f"ctx-{build_id}")
        if env:
            with open(ctx / "Dockerfile", "a") as fh:
                fh.write("".join(f"\nENV {k}={v}" for k, v in env.items()) + "\n")
        image, _ = docker_client.images.build(path=str(ctx), rm=True,
                                              buildargs={"BUILD_ID": build_id, "BASE_IMAGE": base_image})
        for service in SERVICES:
            image.tag(f"{REGISTRY}/{APP}/{service}", build_id)

    yield build
    images.remove_images(docker_client, repo_prefix=f"{REGISTRY}/{APP}/")


@pytest.fixture
def site(engine: Any, docker_client: Any, docker_ps: Any, workdir: Path,
         builds: Callable[..., None]) -> Iterator[Site]:
    """The hand-written nginx.conf with ps's first include, ps.yaml (stable/canary) and ps-bg.yaml
    (the same services and upstreams on blue/green slots). Asks for `builds` so that its containers are
    removed before the images are untagged."""
    from pipeline_steps.config import parse_config
    from pipeline_steps.upstreams import initial_file

    ports: dict[str, dict[str, int]] = {}
    for service in SERVICES:
        stable, canary, blue, green = free_ports(4)
        ports[service] = {"stable": stable, "canary": canary, "blue": blue, "green": green}
    health = {"path": "/health", "interval": "100ms", "timeout": "2s", "retries": 50}

    def config(pair: tuple[str, str], url: str) -> dict[str, Any]:
        return {
            "app": APP, "registry": REGISTRY,
            "hosts": [{"name": "local", "docker": engine.base_url, "address": address()}],
            "services": {s: {"context": ".", "slots": {slot: ports[s][slot] for slot in pair},
                             "url": f"{url}{LOCATIONS[s].rstrip('/')}/", "health": dict(health)}
                         for s in SERVICES},
            "canary": {"steps": [10, 50], "pause": "1s", "check_interval": f"{CHECK_INTERVAL}s", "probe": 0},
            "blue_green": {"watch": "2s"},
            "deploy": {"keep_images": 20},  # every build of the run stays for rollback --to previous
            "state_dir": str(workdir / "state"),
        }

    plain = parse_config({**config(("stable", "canary"), "http://x"), "router": {"include": "u"}},
                         base_dir=workdir)
    first = initial_file(plain, workdir / "u").render()  # what ps's include holds before ps ran
    upstream = {s: f"{APP}_{s}".replace("-", "_") for s in SERVICES}
    nginx = start_site({LOCATIONS[s]: upstream[s] for s in SERVICES}, first)
    router = {"include": str(nginx.include), "url": nginx.url + "/",
              "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                        "error_log": str(nginx.error_log)}}
    canary_raw = {**config(("stable", "canary"), nginx.url), "router": router}
    bg_raw = {**config(("blue", "green"), nginx.url), "router": router}
    (workdir / "ps-bg.yaml").write_text(yaml.safe_dump(bg_raw, sort_keys=False))
    bed = Site(nginx, workdir, docker_ps, docker_client, canary_raw, bg_raw, ports)
    bed.write()
    begun = time.monotonic()
    try:
        yield bed
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
            try:
                c.remove(force=True)
            except Exception:
                pass
        print("\n".join(["", f"summary ({time.monotonic() - begun:.0f}s with the builds):",
                         *(p.line() for p in bed.phases)]))
        log = nginx.error_log.read_text(errors="replace") if nginx.error_log.exists() else ""
        problems = [ln for ln in log.splitlines() if "[error]" in ln or "[crit]" in ln or "no live" in ln]
        if problems:
            print("nginx error.log (errors):\n" + "\n".join(problems[-15:]))
        nginx.stop()


# ---------------------------------------------------------------- the test


def test_core_promise_three_services_behind_a_hand_written_nginx(site: Site,
                                                                  builds: Callable[..., None]) -> None:
    b = {i: f"c0de0000000{i}" for i in range(8)}
    for build in b.values():
        builds(build)
    builds("badb00000008", FAIL_AFTER="3")  # green: healthy at its gate, unhealthy once it served 3 requests
    pause = threading.Event()  # never set: the step of a poll, not a fixed sleep
    check = site.check

    # setup (no load: nothing serves yet): the very first deploy onto empty slots
    first = site.ps("--json", "deploy", "--type", "stable", "--build-id", b[0], timeout=300)
    assert first.returncode == 0, first.stderr
    for service in SERVICES:  # "no canary container": whatever the first deploy made of the canary goes
        c = site.container(service, "canary")
        if c is not None:
            c.remove(force=True)
    assert all(site.running_build(s, "stable") == b[0] for s in SERVICES)

    def stable_runs(build: str) -> bool:
        return all(site.running_build(s, "stable") == build for s in SERVICES)

    def all_on_stable() -> bool:
        return all(site.canary_percent(s) <= 0.5 for s in SERVICES)  # min_weight 1 of 1000 left

    # 1. stable deploy with no canary container
    p, done = site.phase("1 stable, no canary container", "deploy", "--type", "stable", "--build-id", b[1])
    _soft(check, p)
    check(done.returncode == 0 and stable_runs(b[1]) and all_on_stable(), f"1: exit {done.returncode}, "
          f"stable {[site.running_build(s, 'stable') for s in SERVICES]}, {site.weights()}")

    # 2. stable with a stopped canary
    for service in SERVICES:
        if site.container(service, "canary") is None:
            made = site.ps("deploy-env", "--slot", "canary", "--service", service, "--build-id", b[1])
            assert made.returncode == 0, made.stderr
        canary = site.container(service, "canary")
        assert canary is not None
        canary.stop(timeout=5)
    p, done = site.phase("2 stable, canary stopped", "deploy", "--type", "stable", "--build-id", b[2])
    _soft(check, p)
    check(done.returncode == 0 and stable_runs(b[2]) and all_on_stable(),
          f"2: exit {done.returncode}, stable {[site.running_build(s, 'stable') for s in SERVICES]}")

    # 3. canary-manual
    p, done = site.phase("3 canary-manual 30 %", "deploy", "--type", "canary-manual", "--weight", "30",
                         "--build-id", b[3])
    _soft(check, p)
    check(done.returncode == 0 and all(abs(site.canary_percent(s) - 30) < 0.5 for s in SERVICES)
          and all(site.running_build(s, "canary") == b[3] for s in SERVICES),
          f"3: exit {done.returncode}, {site.weights()}")
    check(all(p.load.by_slot(s, since=p.ps_ended).get("canary", 0) > 0 for s in SERVICES),
          "3: the canary answered no request after canary-manual")

    # 4. canary-auto with the probe on
    site.write(probe=PROBE)
    p, done = site.phase("4 canary-auto, probe on", "deploy", "--type", "canary-auto", "--build-id", b[4])
    _soft(check, p)
    check(done.returncode == 0 and all(abs(site.canary_percent(s) - 50) < 0.5 for s in SERVICES),
          f"4: exit {done.returncode}, {site.weights()}: {done.stderr[-400:]}")

    # 5. promote
    p, done = site.phase("5 promote-canary", "deploy", "--type", "promote-canary")
    _soft(check, p)
    check(done.returncode == 0 and stable_runs(b[4]) and all_on_stable(), f"5: exit {done.returncode}")

    # 6. a bad canary, without and with logs_fallback: unhealthy once its 50 % is live, during the probe
    reload = statistics.median(_raw_reload(site.nginx) for _ in range(3))
    bound = CHECK_INTERVAL + reload + MARGIN
    # 6b's logs_fallback matches the app's request log ("GET /api/r7 200"): the logs say it serves while
    # its health endpoint answers 503; an answer that says unhealthy must stay unhealthy
    for label, build, logs in (("6a bad canary", b[5], None), ("6b bad canary, logs_fallback", b[6],
                                                               r"GET /\S* 200")):
        site.write(probe=PROBE_HOLD, steps=[{"weight": 50, "pause": "3s"}], logs_fallback=logs)
        broken: dict[str, float] = {}

        def break_canary(load: KeepAliveLoad, _broken: dict[str, float] = broken,
                         _build: str = build) -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # 50 % is live in nginx: the probe is starting
                if site.canary_percent(BAD) >= 49.5 and site.running_build(BAD, "canary") == _build:
                    c = site.container(BAD, "canary")
                    assert c is not None
                    _broken["start"] = time.monotonic()
                    c.exec_run(["touch", "/tmp/unhealthy"])
                    _broken["at"] = time.monotonic()  # /health answers 503 from here on
                    return
                pause.wait(0.02)

        p, done = site.phase(label, "deploy", "--type", "canary-auto", "--build-id", build,
                             during=break_canary, tail=60)
        _soft(check, p)
        out = _result(done)
        check("at" in broken, f"{label}: 50 % never went live, the canary was not broken")
        back = _back_on(p.load, broken["at"]) if "at" in broken else None
        delay = None if back is None else back - broken["at"]
        p.notes.update(unhealthy_to_stable=None if delay is None else f"{delay:.3f}s",
                       bound=f"{bound:.3f}s", ps_rollback_seconds=out.get("rollback_seconds"))
        print(f"  {label}: unhealthy -> stable {p.notes['unhealthy_to_stable']} (bound {bound:.3f}s = "
              f"{CHECK_INTERVAL} + reload {reload:.3f} + margin {MARGIN}), ps says "
              f"{out.get('rollback_seconds')}")
        check(done.returncode == 1 and out.get("result") == "rolled-back",
              f"{label}: exit {done.returncode}, result {out.get('result')}: {out.get('message')}")
        check(BAD in str(out.get("message")),
              f"{label}: the message does not name {BAD}: {out.get('message')}")
        check(all_on_stable(), f"{label}: not back on stable: {site.weights()}")
        check(delay is not None and delay <= bound,
              f"{label}: unhealthy -> stable took {delay} s, more than {bound:.3f} s")

    # 7. rollback --to previous: the stable before b4 was b2
    site.write()
    p, done = site.phase("7 rollback --to previous", "deploy", "--type", "rollback", "--to", "previous")
    _soft(check, p)
    check(done.returncode == 0 and stable_runs(b[2]) and all_on_stable(),
          f"7: exit {done.returncode}, stable {[site.running_build(s, 'stable') for s in SERVICES]}")

    # 8. blue-green (ps-bg.yaml: the same upstreams on blue/green slots): onto blue, then a failing green
    p, done = site.phase("8a blue-green onto blue", "deploy", "--type", "blue-green", "--build-id", b[7],
                         config="ps-bg.yaml")
    _soft(check, p)
    check(done.returncode == 0 and _active(site) == "blue", f"8a: exit {done.returncode}, {site.weights()}")
    p, done = site.phase("8b blue-green, green fails after the switch", "deploy", "--type", "blue-green",
                         "--build-id", "badb00000008", config="ps-bg.yaml")
    _soft(check, p)
    out = _result(done)
    after = p.load.by_slot(since=p.ps_ended)
    check(done.returncode == 1, f"8b: exit {done.returncode} ({out.get('result')}: {out.get('message')})")
    check(_active(site) == "blue" and set(after) == {"blue"}, f"8b: traffic not back on blue: "
          f"{site.weights()}, answers after ps ended {after}")
    check(all(site.running_build(s, "blue") == b[7] for s in SERVICES), "8b: blue is not running b7")

    green = [p.load.started + r.t for r in p.load.records if r.slot == "green"]
    if green:  # reported, not asserted: from green's first answer (the switch) to traffic back on blue
        back = _back_on(p.load, green[0], slot="blue")
        p.notes["switch_to_blue_again"] = None if back is None else f"{back - green[0]:.3f}s"
        print(f"  8b: green answered from the switch until blue again: {p.notes['switch_to_blue_again']}")
    assert not site.failures, "\n".join(site.failures)


def _soft(check: Callable[[bool, str], None], phase: Phase) -> None:
    """The load checks of a phase, recorded (the test goes on to the next phase, then fails)."""
    load = phase.load
    check(load.failed == 0, f"{phase.name}: {load.failed} of {load.sent} requests failed: {load.errors(5)}")
    check(load.achieved_rate >= MIN_RATE, f"{phase.name}: load ran at {load.achieved_rate:.1f}/s only")
    check(load.reused > load.sent / 2,  # keep-alive really in use (reloads close idle connections)
          f"{phase.name}: only {load.reused} of {load.sent} on reused connections")


def _active(site: Site) -> str | None:
    """The blue/green color taking regular traffic in every upstream, if they agree."""
    colors = set()
    for servers in site.weights().values():
        live = {slot for slot, _, regular in servers if regular}
        colors.add(live.pop() if len(live) == 1 else None)
    return colors.pop() if len(colors) == 1 else None
