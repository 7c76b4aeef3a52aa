"""`ps verify-weights`: prove the live upstream weights, and with --probe the traffic that really flows."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from pipeline_steps.command import load, pass_output, report
from pipeline_steps.config import SLOT_PAIRS, Config, Service
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.inputs import PERCENT
from pipeline_steps.output import Output
from pipeline_steps.steps.traffic import load_live, require_router
from pipeline_steps.upstreams import Upstream, active_color, locate, slots_in
from pipeline_steps.weights import Weights, binomial_interval, check_percent

CONFIDENCE = 0.99
MAX_PROBE = 100_000
PROBE_TIMEOUT = 5.0


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
    ok: bool
    tolerance: int
    include: str
    services: list[dict[str, Any]] = field(default_factory=list)


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
    per_slot = slots_in(upstream, service, config.hosts)
    configured: dict[str, list[int]] = {s: [ln.effective_weight for ln in per_slot.get(s, [])
                                            if not ln.backup and not ln.down] for s in ("stable", "canary")}
    totals = {s: sum(v) for s, v in configured.items()}
    total = sum(totals.values())
    verdict = ServiceVerdict(service.name, service.upstream, "canary", expected={},
                             configured={"weights": configured,
                                         "canary_share": totals["canary"] / total if total else 0.0})
    for slot in ("stable", "canary"):
        if len(configured[slot]) != len(config.hosts):
            verdict.problems.append(f"{service.name}: {len(configured[slot])} live {slot} server line(s) "
                                    f"for {len(config.hosts)} host(s)")
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
    active = active_color(upstream, service, config.hosts)
    per_slot = slots_in(upstream, service, config.hosts)
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


def _probe(config: Config, service: Service, url: str, n: int) -> dict[str, int]:
    """Send n sequential requests through nginx; count answers per slot (X-Upstream, else X-Slot)."""
    import requests

    from pipeline_steps.upstreams import ServerLine

    counts: dict[str, int] = {}
    deadline = time.monotonic() + max(30.0, n * 0.25)
    with requests.Session() as session:
        for i in range(n):
            if time.monotonic() > deadline:
                raise CheckFailed(f"probe of {url} ran out of time after {i} of {n} requests")
            try:
                answer = session.get(url, timeout=PROBE_TIMEOUT, allow_redirects=False,
                                     headers={"Connection": "close"})  # no old worker keeps us
            except requests.RequestException as exc:
                if i == 0:
                    raise Unreachable(f"nginx at {url} did not answer: {type(exc).__name__}") from None
                counts["error"] = counts.get("error", 0) + 1
                continue
            slot: str | None = None
            upstream_addr = answer.headers.get("X-Upstream", "")
            if upstream_addr:
                last = upstream_addr.split(",")[-1].strip()
                where = locate(service, config.hosts, ServerLine(last))
                slot = where[1] if where else None
            slot = slot or answer.headers.get("X-Slot") or "unknown"
            counts[slot] = counts.get(slot, 0) + 1
    return counts


def verify_weights(config: Config, *, expect_canary: float | None = None, expect_active: str | None = None,
                   tolerance: int | None = None, probe: int = 0, url: str | None = None,
                   services: Sequence[str] | None = None) -> VerifyResult:
    """Compare the live upstream weights (and with probe > 0 the measured split) with the expectation.

    Returns the result; the caller decides (result.ok). Bad input raises BadInput.
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
    probe_url = url or router.url
    if probe and not probe_url:
        raise BadInput("--probe needs --url or router.url")
    if probe and len(chosen) != 1:
        raise BadInput("--probe measures one service: give --service NAME")
    live = load_live(config)
    if live is None:
        raise CheckFailed(f"nginx include file {router.include} does not exist (no set-weights/switch yet)")
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
        if probe and probe_url:
            counts = _probe(config, service, probe_url, probe)
            if kind == "canary":
                target_slot, p = "canary", float(verdict.expected["canary_share"])
            else:
                target_slot, p = str(verdict.expected.get("active") or "blue"), 1.0
            hits = counts.get(target_slot, 0)
            low, high = binomial_interval(probe, p, CONFIDENCE)
            verdict.measured = {"requests": probe, "counts": counts, "slot": target_slot,
                                "share": hits / probe, "expected_share": p,
                                "interval": [low / probe, high / probe], "confidence": CONFIDENCE}
            if not low <= hits <= high:
                verdict.problems.append(
                    f"{service.name}: {target_slot} answered {hits} of {probe} requests "
                    f"({100 * hits / probe:.1f} %), outside the 99 % interval "
                    f"{100 * low / probe:.1f}..{100 * high / probe:.1f} % around {100 * p:.1f} %")
        verdicts.append(verdict)
    return VerifyResult(ok=all(v.ok for v in verdicts), tolerance=tolerance, include=router.include,
                        services=[{**asdict(v), "ok": v.ok} for v in verdicts])


@click.command("verify-weights")
@click.option("--expect-canary", type=PERCENT, metavar="PCT", help="Expected canary share in percent.")
@click.option("--expect-active", metavar="COLOR", help="Expected active color (blue or green).")
@click.option("--tolerance", type=click.IntRange(min=0), metavar="UNITS",
              help="Allowed difference in weight units (default canary.tolerance, 2).")
@click.option("--probe", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also send N requests through nginx and check where they went.")
@click.option("--url", metavar="URL", help="Where to probe (default router.url).")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME", help="Only this service.")
@pass_output
def command(out: Output, expect_canary: float | None, expect_active: str | None, tolerance: int | None,
            probe: int, url: str | None, service_names: tuple[str, ...]) -> None:
    """Prove the live nginx weights (and measured split) match the expectation; exit 1 if not."""
    config = load(out)
    result = verify_weights(config, expect_canary=expect_canary, expect_active=expect_active,
                            tolerance=tolerance, probe=probe, url=url, services=list(service_names) or None)
    for v in result.services:
        conf = v["configured"]
        if v["kind"] == "canary" and "canary_share" in conf:
            line = f"{v['service']}: configured canary {100 * conf['canary_share']:.1f} %"
            if "canary_percent" in v["expected"]:
                line += f", expected {v['expected']['canary_percent']:g} %"
        else:
            line = (f"{v['service']}: active {conf.get('active') or '?'}, "
                    f"expected {v['expected'].get('active')}")
        if v["measured"]:
            m = v["measured"]
            line += (f", measured {m['slot']} {100 * m['share']:.1f} % of {m['requests']} "
                     f"(99 % interval {100 * m['interval'][0]:.1f}..{100 * m['interval'][1]:.1f} %)")
        out.say(line + (" ok" if v["ok"] else " MISMATCH"))
        for problem in v["problems"]:
            out.say(f"  {problem}")
    data = asdict(result)
    if not result.ok:
        first = next(p for v in result.services for p in v["problems"])
        raise CheckFailed(first, result=data)
    report(out, "verify-weights", data)
