"""The real Prober (adapters/interfaces.py): HTTP GET, TCP connect, Docker's container health and the
logs fallback, with the HTTP session and the engines (DockerHost, adapters.docker_host.open_host) of one
gate run. What the answers mean (status wanted, --expect, latency) is decided with the pure rules of
pipeline_steps/health.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters import http_probe
from pipeline_steps.config import Host
from pipeline_steps.errors import unreachable
from pipeline_steps.health import (
    LOG_TAIL,
    GatePolicy,
    HealthTarget,
    ProbeResult,
    check_expectations,
    container_readiness,
    json_text,
    logs_allowed,
    logs_match,
    run_start_ns,
)

if TYPE_CHECKING:
    import requests

    from pipeline_steps.adapters.interfaces import DockerHost

__all__ = ["LiveProber"]


class LiveProber:
    """The real prober: holds the HTTP session and engines of one gate run (closed by close())."""

    def __init__(self) -> None:
        self._session: requests.Session | None = None
        self._clients: dict[Host, DockerHost] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = http_probe.new_session()
        return self._session

    def prepare(self) -> None:
        """Import and set up HTTP now, so the first try's timing does not include it."""
        self.session  # noqa: B018

    def docker(self, host: Host) -> DockerHost:
        """The engine of `host` (Unreachable, exit 3, when it does not answer)."""
        if host not in self._clients:
            from pipeline_steps.adapters import docker_host

            self._clients[host] = docker_host.open_host(host, timeout=10)
        return self._clients[host]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        for client in self._clients.values():
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        """One target once (the logs fallback only when the target gave no answer at all)."""
        if target.kind == "http":
            result = self._http(target, policy)
        elif target.kind == "tcp":
            host, _, port = target.address.rpartition(":")
            answer = http_probe.tcp_connect(host, int(port), policy.timeout)
            ms = answer.latency * 1000
            if answer.error:
                result = ProbeResult(target.label, False, "refused" if answer.not_listening else "error", ms,
                                     answer.error, not_listening=answer.not_listening,
                                     no_answer=answer.not_listening or answer.timed_out)
            else:
                result = ProbeResult(target.label, True, "open", ms)
        else:
            result = self._container(target)
        if logs_allowed(result) and policy.logs_fallback and target.logs_container and target.docker:
            why = self._logs_proof(target.docker, target.logs_container, policy.logs_fallback)
            if why is None:
                return replace(result, ok=True, reason="",
                               detail=f"logs of {target.logs_container} match (was: {result.reason})")
            return replace(result, reason=f"{result.reason} ({why})")
        return result

    def _http(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        label = target.label
        answer = http_probe.http_get(target.address, policy.timeout, policy.max_body, self.session)
        ms = answer.latency * 1000
        if answer.status is None:
            status = "refused" if answer.error == "connection refused" else "error"
            return ProbeResult(label, False, status, ms, answer.error or "no answer",
                               not_listening=answer.not_listening,
                               no_answer=answer.not_listening or answer.timed_out)
        status = str(answer.status)
        if answer.error:  # a partial answer (reset mid-body, too big, too slow to finish): it answered
            return ProbeResult(label, False, status, ms, answer.error)
        data: Any = None
        parsed = False
        try:
            data = json.loads(answer.body.decode("utf-8"))
            parsed = True
        except (UnicodeDecodeError, ValueError):
            pass
        detail = ""
        if parsed and isinstance(data, dict) and "status" in data:
            detail = f"status={json_text(data['status'])[:40]}"
        if policy.expect_status is not None:
            if answer.status != policy.expect_status:
                return ProbeResult(label, False, status, ms, f"HTTP {status} (want {policy.expect_status})",
                                   detail, not_ready=True)
        elif not 200 <= answer.status < 300:
            return ProbeResult(label, False, status, ms, f"HTTP {status} (want 2xx)", detail, not_ready=True)
        if policy.expect:
            if not parsed:
                return ProbeResult(label, False, status, ms, "body is not JSON", detail, not_ready=True)
            problem = check_expectations(data, policy.expect)
            if problem:
                return ProbeResult(label, False, status, ms, problem, detail, not_ready=True)
        if policy.max_latency is not None and answer.latency > policy.max_latency:
            return ProbeResult(label, False, status, ms,
                               f"too slow: {ms:.0f} ms > {policy.max_latency * 1000:.0f} ms", detail)
        return ProbeResult(label, True, status, ms, "", detail)

    def _inspect(self, host: Host, name: str) -> dict[str, Any] | None:
        """`docker inspect` of a container (None when there is none; EngineError when the engine refused;
        Unreachable for a dead engine)."""
        from pipeline_steps.adapters.interfaces import EngineGone

        try:
            found = self.docker(host).container(name)
        except EngineGone:
            raise unreachable(f"Docker engine of host {host.name} ({host.endpoint})",
                              "stopped answering") from None
        return dict(found.attrs) if found is not None else None

    def _container(self, target: HealthTarget) -> ProbeResult:
        from pipeline_steps.adapters.interfaces import EngineError

        host = target.docker or Host(name="local")
        start = time.monotonic()
        try:
            info = self._inspect(host, target.address)
        except EngineError as exc:
            return ProbeResult(target.label, False, "error", _ms(start), f"Docker: {exc}")
        if info is None:
            return ProbeResult(target.label, False, "missing", _ms(start), "no such container")
        state = info.get("State") or {}
        verdict = container_readiness(state)  # the one rule (pipeline_steps/health.py)
        if not verdict.running:
            return ProbeResult(target.label, False, verdict.status, _ms(start),
                               f"container is {verdict.status} (exit code {state.get('ExitCode')})")
        health = state.get("Health") or {}
        if not verdict.health:
            return ProbeResult(target.label, True, "running", _ms(start), detail="running, no HEALTHCHECK")
        status = verdict.health
        log = health.get("Log") or []
        last = (log[-1].get("Output") or "").strip().replace("\n", " ")[:80] if log else ""
        detail = f"exit={log[-1].get('ExitCode')} {last}".strip() if log else ""
        if verdict.ready:
            return ProbeResult(target.label, True, status, _ms(start), detail=detail)
        # Docker has no verdict yet while `starting`: like a port that does not answer yet
        return ProbeResult(target.label, False, status, _ms(start), f"Docker health is {status}", detail,
                           no_answer=status == "starting")

    def _logs_proof(self, host: Host, container: str, pattern: str) -> str | None:
        """None when a complete log line of the container's current run matches, else why not."""
        from pipeline_steps.adapters.interfaces import EngineError, EngineGone

        try:
            info = self._inspect(host, container)
        except EngineError as exc:
            return f"logs of {container}: Docker: {exc}"
        if info is None:
            return f"logs of {container}: no such container"
        state = info.get("State") or {}
        verdict = container_readiness(state)
        if not verdict.running:
            return f"logs of {container}: not counted, it is {verdict.status}"
        if verdict.health == "unhealthy":
            return f"logs of {container}: not counted, Docker health is unhealthy"
        since = run_start_ns(state)
        if since is None:
            return f"logs of {container}: start time {state.get('StartedAt')!r} unreadable"
        try:  # by id: a container re-created under the same name since the inspect has other logs
            text = self.docker(host).logs(str(info.get("Id") or container), timestamps=True,
                                          since=max(1, since // 1_000_000_000), tail=LOG_TAIL)
        except EngineGone:
            raise unreachable(f"Docker engine of host {host.name} ({host.endpoint})",
                              "stopped answering") from None
        except EngineError as exc:
            return f"logs of {container}: unreadable ({type(exc).__name__})"
        if logs_match(text, since, pattern):
            return None
        return f"logs of {container}: no line matching {pattern!r} since it started"



def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000

