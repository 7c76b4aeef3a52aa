"""`ps verify-weights`: a line per service, exit 1 on a mismatch (the work: operations/verify_weights.py)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import PERCENT
from pipeline_steps.errors import CheckFailed
from pipeline_steps.operations.verify_weights import verify_weights


@click.command("verify-weights")
@click.option("--expect-canary", type=PERCENT, metavar="PCT", help="Expected canary share in percent.")
@click.option("--expect-active", metavar="COLOR", help="Expected active color (blue or green).")
@click.option("--tolerance", type=click.IntRange(min=0), metavar="UNITS",
              help="Allowed difference in weight units (default canary.tolerance, 2).")
@click.option("--probe", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also send N requests through nginx and check where they went.")
@click.option("--url", metavar="URL",
              help="Where to probe (default services.<s>.url; router.url when there is one service).")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME", help="Only this service.")
@pass_output
def command(out: Output, expect_canary: float | None, expect_active: str | None, tolerance: int | None,
            probe: int, url: str | None, service_names: tuple[str, ...]) -> None:
    """Prove the live nginx weights (and measured split) match the expectation; exit 1 if not."""
    config = load(out)
    result = verify_weights(config, expect_canary=expect_canary, expect_active=expect_active,
                            tolerance=tolerance, probe=probe, url=url, services=list(service_names) or None)
    sections = result.routers or [{"router": None, "services": result.services}]
    for section in sections:
        prefix = f"{section['router']}: " if section["router"] else ""
        for v in section["services"]:
            out.say(prefix + _line(v) + (" ok" if v["ok"] else " MISMATCH"))
            for problem in v["problems"]:
                out.say(f"  {problem}")
    if result.front is not None:
        m = result.front["measured"]
        out.say(f"front {result.front['url']}: {result.front['service']}: measured {_measured(m)}"
                + (" MISMATCH" if result.front["problems"] else " ok"))
        for problem in result.front["problems"]:
            out.say(f"  {problem}")
    data = asdict(result)
    if not result.ok:
        first = result.problems()[0]
        raise CheckFailed(first, result=data)
    report(out, "verify-weights", data)


def _measured(m: dict[str, Any]) -> str:
    return (f"{m['slot']} {100 * m['share']:.1f} % of {m['valid']} valid answers "
            f"(of {m['requests']} requests to {m['url']}; {100 * m['confidence']:g} % interval "
            f"{100 * m['interval'][0]:.1f}..{100 * m['interval'][1]:.1f} %)")


def _line(v: dict[str, Any]) -> str:
    """One service's verdict: configured, expected and (with --probe) measured."""
    conf = v["configured"]
    if v["kind"] == "canary" and "canary_share" in conf:
        line = f"{v['service']}: configured canary {100 * conf['canary_share']:.1f} %"
        if "canary_percent" in v["expected"]:
            line += f", expected {v['expected']['canary_percent']:g} %"
    else:
        line = (f"{v['service']}: active {conf.get('active') or '?'}, "
                f"expected {v['expected'].get('active')}")
    if v["measured"] and v["measured"].get("by") == "keys":  # issue 13: a sticky split, by keys
        m = v["measured"]
        line += (f", measured canary {100 * m['share']:.1f} % of {m['valid']} keys by {m['key']} "
                 f"(expected {100 * m['expected_share']:g} %; {100 * m['confidence']:g} % interval "
                 f"{100 * m['interval'][0]:.1f}..{100 * m['interval'][1]:.1f} %; "
                 f"{m['keys_on_both_slots']} keys on both slots, {m.get('keys_off_their_slot', 0)} off "
                 "their slot)")
    elif v["measured"]:
        line += f", measured {_measured(v['measured'])}"
    return line
