"""`ps health-gate`: targets from the options, each try as a line (the loop: operations/health_gate.py)."""

from __future__ import annotations

import threading
from dataclasses import replace

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION
from pipeline_steps.config import HealthSpec, Host
from pipeline_steps.durations import format_duration
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.health import (
    GatePolicy,
    HealthTarget,
    TryRecord,
    _expect_pairs,
    service_targets,
    try_line,
)
from pipeline_steps.operations.health_gate import gate, gate_hosts


@click.command("health-gate")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="An HTTP(S) URL that must answer (repeatable).")
@click.option("--service", "-s", metavar="NAME", help="Every host's port of this service's --slot (ps.yaml).")
@click.option("--slot", metavar="SLOT", help="The slot of --service (stable, canary, blue, green).")
@click.option("--container", "containers", multiple=True, metavar="NAME",
              help="Docker's health status of this container (no HEALTHCHECK: healthy while running).")
@click.option("--tcp", "tcps", multiple=True, metavar="HOST:PORT", help="A port that accepts connections.")
@click.option("--retries", type=click.IntRange(min=1), help="Counted tries before giving up [30].")
@click.option("--interval", type=DURATION, help="From the start of one try to the next [2s].")
@click.option("--timeout", type=DURATION, help="Per try [5s].")
@click.option("--expect-status", type=click.IntRange(100, 599), help="This status only [any 2xx].")
@click.option("--expect", "expects", multiple=True, metavar="KEY=VALUE",
              help="A dotted JSON path and its value, e.g. checks.redis=up (repeatable).")
@click.option("--max-latency", type=DURATION, help="A slower answer is a failure.")
@click.option("--successes", type=click.IntRange(min=1), help="Passing tries in a row [1].")
@click.option("--start-period", type=DURATION, help="Failures inside it do not count toward retries.")
@click.option("--logs-fallback", metavar="REGEX",
              help="When a target gives no answer at all, a matching log line of the container's current "
                   "run counts as up (with --url needs --container).")
@click.option("--all", "all_services", is_flag=True,
              help="With --slot: every service of ps.yaml that has that slot (each with its health spec).")
@pass_output
def command(out: Output, urls: tuple[str, ...], service: str | None, slot: str | None,
            containers: tuple[str, ...], tcps: tuple[str, ...], retries: int | None, interval: float | None,
            timeout: float | None, expect_status: int | None, expects: tuple[str, ...],
            max_latency: float | None, successes: int | None, start_period: float | None,
            logs_fallback: str | None, all_services: bool = False) -> None:
    """Wait until every target is healthy (exit 0), or give up with the last reason (exit 1)."""
    if all_services:  # issue 15 (ci helper): every service of ps.yaml with that slot, one after another
        if service or not slot or urls or containers or tcps:
            raise BadInput("--all goes with --slot alone (no --service, --url, --container, --tcp)")
        ctx = click.get_current_context()
        names = [s.name for s in load(out).services.values() if slot in s.slots]
        if not names:
            raise BadInput(f"no service has a {slot} slot")
        for name in names:
            ctx.invoke(command, service=name, slot=slot, urls=(), containers=(), tcps=(), retries=retries,
                       interval=interval, timeout=timeout, expect_status=expect_status, expects=expects,
                       max_latency=max_latency, successes=successes, start_period=start_period,
                       logs_fallback=logs_fallback, all_services=False)
        return
    if slot and not service:
        raise BadInput("--slot needs --service")
    if service and not slot:
        raise BadInput("--service needs --slot (which slot's port to check)")
    expect = _expect_pairs(expects) if expects else None
    spec = HealthSpec()
    targets: list[HealthTarget] = []
    limit = 0
    if service and slot:
        config = load(out)
        spec = config.service(service).health
        targets.extend(service_targets(config, service, slot))
        limit = config.parallel_hosts
    policy = GatePolicy.from_spec(spec, retries=retries, interval=interval, timeout=timeout,
                                  expect_status=expect_status, expect=expect, max_latency=max_latency,
                                  successes=successes, start_period=start_period,
                                  logs_fallback=logs_fallback)
    if logs_fallback and urls and len(containers) != 1:
        raise BadInput("--logs-fallback with --url needs exactly one --container whose logs to search")
    logs_container = containers[0] if containers and policy.logs_fallback else None
    targets.extend(HealthTarget.url(u, logs_container=logs_container,
                                    docker=Host(name="local") if logs_container else None) for u in urls)
    targets.extend(HealthTarget.tcp(t) for t in tcps)
    targets.extend(replace(HealthTarget.container(c), logs_container=c if policy.logs_fallback else None)
                   for c in containers)
    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    hosts = {t.docker.name for t in targets if t.docker is not None}
    if service and not (urls or containers or tcps) and len(hosts) > 1:
        # one gate per host, all at once (as a deploy gates): each host needs its own passing tries
        printing = threading.Lock()

        def on_host_try(host: str, record: TryRecord) -> None:
            with printing:
                _print_try(out, record, policy.retries, f"host {host}: ")

        result = gate_hosts(targets, policy, on_try=on_host_try, limit=limit)
    else:
        result = gate(targets, policy, on_try=lambda r: _print_try(out, r, policy.retries))
    data = result.as_dict()
    took = format_duration(result.elapsed)
    tries = f"{result.tries} {'try' if result.tries == 1 else 'tries'}"
    if not result.healthy:
        out.say(f"unhealthy: gave up after {tries} in {took}: "
                f"{result.last_status} {result.reason}")
        raise CheckFailed(f"health gate gave up after {tries} in {took}: {result.reason}",
                          result={"step": "health-gate", **data})
    out.say(f"healthy after {tries} in {took}"
            + (f" ({result.attempts} probes)" if result.attempts != result.tries else ""))
    report(out, "health-gate", data)


def _print_try(out: Output, record: TryRecord, retries: int, where: str = "") -> None:
    if record.counted or record.ok:
        out.say(where + try_line(record, retries))
    else:
        out.debug(where + try_line(record, retries))
