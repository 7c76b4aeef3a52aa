"""`ps verify-weights`: prove the live upstream weights, and with --probe the traffic that really flows."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters.traffic_probe import PROBE_TIMEOUT, Answer, ProbeRun, send_probe
from pipeline_steps.config import SLOT_PAIRS, Config, Service
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.operations.traffic import load_live, missing_include, require_router
from pipeline_steps.upstreams import Upstream, active_color, last_upstream, locate, slots_in
from pipeline_steps.weights import Weights, binomial_interval, check_percent, share

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import TrafficSender

__all__ = ["PROBE_TIMEOUT", "Answer", "ProbeRun", "classify", "describe_invalid", "last_upstream",
           "family_confidence", "measure", "probe_url", "send_probe", "verify_weights"]

CONFIDENCE = 0.99  # for all the split measures of one verification together (see family_confidence)
MAX_PROBE = 100_000


@dataclass
class ServiceVerdict:
    """Expected, configured and measured traffic of one service."""

    service: str
    upstream: str
    kind: str  # canary | blue-green
    expected: dict[str, Any]
    configured: dict[str, Any]
    measured: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyResult:
    """The verdicts: `services` are router 1's; with many routers `routers` has a section per router
    (router, url, hosts, ok, services), and `front` the split measured through routers_url."""

    ok: bool
    tolerance: int
    include: str
    services: list[dict[str, Any]] = field(default_factory=list)
    routers: list[dict[str, Any]] = field(default_factory=list)
    front: dict[str, Any] | None = None

    def problems(self) -> list[str]:
        """Every problem: router 1's, each other router's (named), then the front's."""
        found = [p for v in self.services for p in v.get("problems", [])]
        for section in self.routers[1:]:
            found.extend(f"{section['router']}: {p}" for v in section["services"] for p in v["problems"])
        if self.front is not None:
            found.extend(self.front.get("problems", []))
        return found


def _choose(config: Config, names: Sequence[str] | None, expect_canary: float | None,
            expect_active: str | None) -> list[Service]:
    if names:
        chosen = [config.service(n) for n in names]
    elif expect_canary is not None:
        chosen = [s for s in config.services.values() if s.pair("canary")]
    elif expect_active is not None:
        chosen = [s for s in config.services.values() if s.pair("blue-green")]
    else:
        chosen = list(config.services.values())
    if not chosen:
        raise BadInput("no configured service matches this expectation")
    for s in chosen:
        if expect_canary is not None and not s.pair("canary"):
            raise BadInput(f"service {s.name} has no stable/canary pair for --expect-canary")
        if expect_active is not None and not s.pair("blue-green"):
            raise BadInput(f"service {s.name} has no blue/green pair for --expect-active")
    return chosen


def _check_canary(config: Config, service: Service, upstream: Upstream, expect: float | None,
                  tolerance: int) -> ServiceVerdict:
    per_slot = slots_in(upstream, service, config.hosts_of(service))
    configured: dict[str, list[int]] = {s: [ln.effective_weight for ln in per_slot.get(s, [])
                                            if not ln.backup and not ln.down] for s in ("stable", "canary")}
    totals = {s: sum(v) for s, v in configured.items()}
    total = sum(totals.values())
    verdict = ServiceVerdict(service.name, service.upstream, "canary", expected={},
                             configured={"weights": configured,
                                         "canary_share": totals["canary"] / total if total else 0.0})
    for slot in ("stable", "canary"):
        if len(configured[slot]) != len(config.hosts_of(service)):
            verdict.problems.append(f"{service.name}: {len(configured[slot])} live {slot} server line(s) "
                                    f"for {len(config.hosts_of(service))} host(s)")
    if expect is not None:
        target = Weights.from_percent(expect, config.canary.scale, config.canary.min_weight)
        verdict.expected = {"canary_percent": expect, "weights": {"stable": target.stable,
                                                                   "canary": target.canary},
                            "canary_share": target.canary_share}
        for slot, want in (("stable", target.stable), ("canary", target.canary)):
            for weight in configured[slot]:
                if abs(weight - want) >= tolerance:
                    verdict.problems.append(f"{service.name}: {slot} weight {weight}, expected {want} "
                                            f"(tolerance {tolerance})")
                    break
    else:
        verdict.expected = {"canary_share": verdict.configured["canary_share"]}
        for slot in ("stable", "canary"):
            if len(set(configured[slot])) > 1:
                verdict.problems.append(f"{service.name}: {slot} weights differ between hosts: "
                                        f"{configured[slot]}")
    return verdict


def _check_blue_green(config: Config, service: Service, upstream: Upstream,
                      expect: str | None) -> ServiceVerdict:
    active = active_color(upstream, service, config.hosts_of(service))
    per_slot = slots_in(upstream, service, config.hosts_of(service))
    verdict = ServiceVerdict(service.name, service.upstream, "blue-green",
                             expected={"active": expect or active},
                             configured={"active": active,
                                         "backup": [c for c in SLOT_PAIRS["blue-green"] if per_slot.get(c)
                                                    and all(s.backup for s in per_slot[c])]})
    if active is None:
        verdict.problems.append(f"{service.name}: no single active color in upstream {service.upstream}")
    elif expect is not None and active != expect:
        verdict.problems.append(f"{service.name}: active color is {active}, expected {expect}")
    return verdict


# ---------------------------------------------------------------- the probe

INVALID_TEXT = {
    "no answer": "got no answer",
    "other upstream": "named a server outside upstream {upstream}",
    "unknown build": "named a build that none of the service's slots runs",
    "ambiguous build": "named a build that several slots run (add X-Upstream to tell them apart)",
    "no server named": "named no server (neither X-Upstream nor X-Build-Id; the site needs "
                       "`add_header X-Upstream $upstream_addr always;`)",
}


def classify(answer: Answer, servers: dict[str, str], builds: dict[str, set[str]]) -> tuple[str | None, str]:
    """(slot, "") for an answer that counts, else (None, reason).

    It counts only when it is 2xx and names a server of the service's upstream: X-Upstream's last address
    is one of `servers` (address -> slot), or without X-Upstream its X-Build-Id runs in exactly one slot
    (`builds`: build id -> slots).
    """
    if answer.status is None:
        return None, "no answer"
    if not 200 <= answer.status < 300:
        return None, f"status {answer.status}"
    if answer.upstream and answer.upstream.strip():
        slot = servers.get(last_upstream(answer.upstream))
        return (slot, "") if slot else (None, "other upstream")
    if answer.build_id and answer.build_id.strip():
        slots = builds.get(answer.build_id.strip(), set())
        if len(slots) == 1:
            return next(iter(slots)), ""
        return None, "ambiguous build" if slots else "unknown build"
    return None, "no server named"


def describe_invalid(reason: str, count: int, total: int, upstream: str) -> str:
    """`12 of 400 answers were 404`."""
    if reason.startswith("status "):
        return f"{count} of {total} answers were {reason.removeprefix('status ')}"
    return f"{count} of {total} answers {INVALID_TEXT.get(reason, reason).format(upstream=upstream)}"


def probe_url(config: Config, service: Service, url: str | None = None) -> str:
    """Where to probe `service`: --url, else services.<s>.url, else router.url when it is the only
    service. BadInput (exit 2) naming the key otherwise."""
    if url:
        return url
    if service.url:
        return service.url
    if config.router and config.router.url and len(config.services) == 1:
        return config.router.url
    raise BadInput(f"--probe needs the URL where nginx serves {service.name}: set "
                   f"services.{service.name}.url in {config.source} (router.url stands in only when "
                   "ps.yaml has one service) or give --url")


def through(base: str, service: Service) -> str:
    """`base` (a router's or the front balancer's address) with the path of the service's own url when
    `base` names no path: every router serves the service at the path its public URL has."""
    from urllib.parse import urlsplit, urlunsplit

    b = urlsplit(base)
    if b.path not in ("", "/") or not service.url:
        return base
    s = urlsplit(service.url)
    return urlunsplit((b.scheme, b.netloc, s.path or "/", s.query, ""))


def upstream_servers(config: Config, service: Service, upstream: Upstream) -> dict[str, str]:
    """Server address (as written, and as nginx resolves a host name) -> slot, for the upstream's lines."""
    import ipaddress
    import socket

    found: dict[str, str] = {}
    for line in upstream.servers:
        where = locate(service, config.hosts_of(service), line)
        if where is None:
            continue
        found[line.address] = where[1]
        host, port = line.host, line.port
        try:
            ipaddress.ip_address(host.strip("[]"))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError:
            continue
        for info in infos:
            ip = str(info[4][0])
            found[f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"] = where[1]
    return found


def slot_builds(config: Config, service: Service, warnings: list[str]) -> dict[str, set[str]]:
    """BUILD_ID -> slots of `service` from the slot containers' labels (for answers without X-Upstream)."""
    from pipeline_steps.operations.traffic import _build_ids

    out: dict[str, set[str]] = {}
    for (_host, name, slot), build in _build_ids(config, warnings).items():
        if name == service.name and build and slot in service.slots:
            out.setdefault(build, set()).add(slot)
    return out


def family_confidence(measures: int, confidence: float = CONFIDENCE) -> float:
    """The confidence of each of `measures` split measures judged together (each router's and the
    front's), so that a right split fails any of them with at most 1 - `confidence` (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / max(1, measures)


def measure(config: Config, service: Service, upstream: Upstream, run: ProbeRun, target_slot: str,
            p: float, confidence: float = CONFIDENCE) -> tuple[dict[str, Any], list[str]]:
    """Judge a probe run: the measured dict and the problems (any invalid answer is one)."""
    servers = upstream_servers(config, service, upstream)
    warnings: list[str] = []
    builds: dict[str, set[str]] = {}
    if any(a.status is not None and not (a.upstream or "").strip() and (a.build_id or "").strip()
           for a in run.answers):
        builds = slot_builds(config, service, warnings)
    counts: dict[str, int] = {}
    invalid: dict[str, int] = {}
    examples: list[str] = []
    for answer in run.answers:
        slot, reason = classify(answer, servers, builds)
        if slot is not None:
            counts[slot] = counts.get(slot, 0) + 1
            continue
        invalid[reason] = invalid.get(reason, 0) + 1
        if len(examples) < 5:
            examples.append(f"status {answer.status if answer.status is not None else '-'}, "
                            f"X-Upstream {answer.upstream or '-'}, X-Build-Id {answer.build_id or '-'}"
                            + (f", {answer.error}" if answer.error else ""))
    valid = sum(counts.values())
    hits = counts.get(target_slot, 0)
    low, high = binomial_interval(valid, p, confidence)
    measured: dict[str, Any] = {
        "url": run.url, "requests": run.wanted, "answered": len(run.answers), "valid": valid,
        "counts": counts, "invalid": invalid, "examples": examples, "slot": target_slot,
        "share": share(counts, target_slot), "expected_share": p,
        "interval": [low / valid, high / valid] if valid else [0.0, 0.0], "confidence": confidence,
        "timed_out": run.timed_out, "stopped": run.stopped, "warnings": warnings}
    problems: list[str] = []
    total = len(run.answers)
    for reason, count in sorted(invalid.items(), key=lambda kv: -kv[1]):
        problems.append(f"{service.name}: {describe_invalid(reason, count, total, service.upstream)} "
                        f"(probe of {run.url}; e.g. {examples[0]})")
    if run.timed_out or run.stopped:
        ended = "ran out of time" if run.timed_out else "was stopped"
        problems.append(f"{service.name}: probe of {run.url} {ended} after {total} of {run.wanted} requests")
    if valid == 0:
        problems.append(f"{service.name}: no valid answer from {run.url}: nothing measured")
    elif not low <= hits <= high:
        problems.append(
            f"{service.name}: {target_slot} answered {hits} of {valid} valid answers "
            f"({100 * hits / valid:.1f} %), outside the {100 * confidence:g} % interval "
            f"{100 * low / valid:.1f}..{100 * high / valid:.1f} % around {100 * p:.1f} %")
    return measured, problems


def _measure_sticky(config: Config, service: Service, upstream: Upstream, live: Any, url: str, keys: int,
                    deadline: float | None, stop: threading.Event | None,
                    confidence: float) -> tuple[dict[str, Any], list[str]]:
    """issue 13: a sticky split is measured by keys (pipeline_steps.sticky, adapters/key_probe)."""
    from pipeline_steps import sticky
    from pipeline_steps.adapters.key_probe import probe_keys

    percent = sticky.read_split(live, service.upstream)
    if percent is None:
        return {}, [f"{service.name}: ps.yaml asks for a sticky split that the include does not have yet "
                    "(the next ps set-weights writes it)"]
    servers = upstream_servers(config, service, upstream)
    key = config.canary.sticky
    assert key is not None
    run = probe_keys(url, keys, key.kind, key.name, deadline=deadline, stop=stop)
    return sticky.measure_keys(service.name, run, lambda a: classify(a, servers, {}), percent, confidence)


def verify_weights(config: Config, *, expect_canary: float | None = None, expect_active: str | None = None,
                   tolerance: int | None = None, probe: int = 0, url: str | None = None,
                   services: Sequence[str] | None = None, probe_deadline: float | None = None,
                   stop: threading.Event | None = None,
                   sender: TrafficSender | None = None) -> VerifyResult:
    """Compare the live upstream weights (and with probe > 0 the measured split) with the expectation.

    The probe goes to `url`, else the service's own URL (see probe_url); only 2xx answers naming a
    server of the service's upstream count, and any other answer is a problem. `probe_deadline` bounds
    the probe in seconds, `stop` ends it early (safe to run in a thread). Returns the result; the caller
    decides (result.ok). Bad input raises BadInput. `sender` sends the probe (default: send_probe).
    """
    router = require_router(config)
    if expect_canary is not None:
        check_percent(expect_canary)
    if expect_active is not None and expect_active not in SLOT_PAIRS["blue-green"]:
        raise BadInput(f"unknown color {expect_active!r} (use blue or green)")
    if expect_canary is not None and expect_active is not None:
        raise BadInput("give --expect-canary or --expect-active, not both")
    tolerance = config.canary.tolerance if tolerance is None else tolerance
    if tolerance < 1:
        raise BadInput("tolerance must be at least 1 weight unit")
    if probe < 0 or probe > MAX_PROBE:
        raise BadInput(f"--probe must be from 0 to {MAX_PROBE}")
    chosen = _choose(config, services, expect_canary, expect_active)
    if probe and len(chosen) != 1:
        raise BadInput("--probe measures one service: give --service NAME")
    many = len(config.routers) > 1
    front_url = ((url if many else None)  # many routers: --url is the front
                 or (through(config.routers_url, chosen[0]) if config.routers_url else None))
    confidence = family_confidence((len(config.routers) if many else 1) + (1 if front_url else 0))
    if not many:
        where = probe_url(config, chosen[0], url) if probe else None
        verdicts, live = _verify_router(config, chosen, expect_canary, expect_active, tolerance, probe, where,
                                        probe_deadline, stop, sender, confidence)
        sections = [_section(config, router, where, verdicts)]
    else:
        sections, verdicts = [], []
        for i, r in enumerate(config.routers):
            if probe and not r.url:
                raise BadInput(f"--probe with many routers measures through each router: set "
                               f"routers[{i}].url ({r.name}) in {config.source}")
            where = through(r.url, chosen[0]) if probe and r.url else None
            found, _ = _verify_router(config.for_router(r), chosen, expect_canary, expect_active, tolerance,
                                      probe, where, probe_deadline, stop, sender, confidence)
            sections.append(_section(config, r, where, found))
            verdicts = verdicts or found
    front = None
    if probe and front_url:
        front = _measure_front(config, chosen[0], sections, front_url, probe, probe_deadline, stop, sender,
                               confidence)
    ok = all(sec["ok"] for sec in sections) and (front is None or not front["problems"])
    return VerifyResult(ok=ok, tolerance=tolerance, include=router.include,
                        services=[{**asdict(v), "ok": v.ok} for v in verdicts],
                        routers=sections if many else [], front=front)


def _section(config: Config, router: Any, url: str | None, verdicts: list[ServiceVerdict]) -> dict[str, Any]:
    return {"router": router.name, "include": router.include, "url": url,
            "hosts": [h.name for h in config.router_hosts(router)], "ok": all(v.ok for v in verdicts),
            "services": [{**asdict(v), "ok": v.ok} for v in verdicts]}


def _verify_router(config: Config, chosen: list[Service], expect_canary: float | None,
                   expect_active: str | None, tolerance: int, probe: int, where: str | None,
                   probe_deadline: float | None, stop: threading.Event | None,
                   sender: TrafficSender | None, confidence: float) -> tuple[list[ServiceVerdict], Any]:
    """The verdicts of one router (`config`: its view, config.router the router)."""
    router = require_router(config)
    live = load_live(config)
    if live is None:
        raise CheckFailed(missing_include(router) if len(config.routers) == 1 else
                          f"{router.name}: {missing_include(router)}")
    upstreams = live.upstreams()
    verdicts: list[ServiceVerdict] = []
    for service in chosen:
        upstream = upstreams.get(service.upstream)
        kind = "canary" if (expect_canary is not None or
                            (expect_active is None and service.pair("canary"))) else "blue-green"
        if upstream is None:
            verdicts.append(ServiceVerdict(service.name, service.upstream, kind, {}, {},
                                           problems=[f"{service.name}: upstream {service.upstream} "
                                                     f"is not in {router.include}"]))
            continue
        if kind == "canary":
            verdict = _check_canary(config, service, upstream, expect_canary, tolerance)
        else:
            verdict = _check_blue_green(config, service, upstream, expect_active)
        if probe and where:
            if kind == "canary":
                target_slot, p = "canary", float(verdict.expected["canary_share"])
            else:
                target_slot, p = str(verdict.expected.get("active") or "blue"), 1.0
            if kind == "canary" and config.canary.sticky is not None and sender is None:
                verdict.measured, problems = _measure_sticky(config, service, upstream, live, where, probe,
                                                             probe_deadline, stop, confidence)
            else:
                run = (sender or send_probe)(where, probe, deadline=probe_deadline, stop=stop)
                verdict.measured, problems = measure(config, service, upstream, run, target_slot, p,
                                                     confidence)
            verdict.problems.extend(problems)
        verdicts.append(verdict)
    return verdicts, live


def _measure_front(config: Config, service: Service, sections: list[dict[str, Any]], front_url: str,
                   probe: int, probe_deadline: float | None, stop: threading.Event | None,
                   sender: TrafficSender | None, confidence: float) -> dict[str, Any]:
    """The split measured through the front balancer (routers_url, or --url with many routers): every
    router's servers count, and the share must fall in the same interval as each router's."""
    verdict = sections[0]["services"][0]
    if verdict["kind"] == "canary":
        target_slot, p = "canary", float(verdict["expected"].get("canary_share", 0.0))
    else:
        target_slot, p = str(verdict["expected"].get("active") or "blue"), 1.0
    servers: list[Any] = []
    first_live = None
    for r in config.routers:
        live = load_live(config.for_router(r))
        first_live = first_live or live
        up = live.get(service.upstream) if live is not None else None
        servers.extend(up.servers if up is not None else [])
    upstream = Upstream(name=service.upstream, servers=servers)
    if verdict["kind"] == "canary" and config.canary.sticky is not None and sender is None:
        # a sticky split decides per key at every router: measured by keys through the front too
        measured, problems = _measure_sticky(config, service, upstream, first_live, front_url, probe,
                                             probe_deadline, stop, confidence)
    else:
        run = (sender or send_probe)(front_url, probe, deadline=probe_deadline, stop=stop)
        measured, problems = measure(config, service, upstream, run, target_slot, p, confidence)
    return {"url": front_url, "service": service.name, "measured": measured,
            "problems": [f"front {front_url}: {p}" for p in problems]}
