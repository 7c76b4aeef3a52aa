"""Tiny local HTTP backends for the canary-judgement tests and bench: one thread-per-request server on a
loopback port, answering 200 after `delay` seconds (plus a random exponential `jitter` of that mean), and
500 for every `fail_every`-th request (exact shares for tests) or a random `fail_rate` share (seeded)."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testbed.wait import stall


@dataclass
class Backend:
    """A running backend; change `fail_every` / `delay` at any time (0: never fail / no delay)."""

    name: str
    server: ThreadingHTTPServer
    fail_every: int = 0
    delay: float = 0.0
    fail_rate: float = 0.0
    jitter: float = 0.0
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(14))

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.server.server_address[0]}:{self.port}"

    def next_answer(self) -> tuple[int, float]:
        """(status, delay in seconds) of the next request."""
        with self.lock:
            self.served += 1
            delay = self.delay + (self.rng.expovariate(1 / self.jitter) if self.jitter else 0.0)
            if self.fail_every and self.served % self.fail_every == 0:
                return 500, delay
            return (500 if self.fail_rate and self.rng.random() < self.fail_rate else 200), delay

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    backend: Backend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body in one write (no Nagle / delayed-ACK stall on keepalive)
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        backend = self.server.backend
        status, delay = backend.next_answer()
        if delay:
            stall(delay)
        body = (json.dumps({"slot": backend.name, "status": status, "path": self.path}) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Slot", backend.name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def start_backend(name: str, fail_every: int = 0, delay: float = 0.0, fail_rate: float = 0.0,
                  jitter: float = 0.0, seed: int = 14) -> Backend:
    """Start a backend on a free port of the run's address (serves in a daemon thread until stop())."""
    from testbed.ports import address, free_port

    server = _Server((address(), free_port()), _Handler)
    backend = Backend(name, server, fail_every, delay, fail_rate, jitter, rng=random.Random(seed))
    server.backend = backend
    threading.Thread(target=server.serve_forever, name=f"backend-{name}", daemon=True).start()
    return backend


ACCESS_LOG = "logs/ps-access.json"  # relative to nginx's prefix


@dataclass
class JudgedSite:
    """nginx in front of stable/canary backend pairs, logging ps_json to `log`."""

    nginx: Any  # testbed.nginx.Nginx
    pairs: dict[str, tuple[Backend, Backend]]  # upstream -> (stable, canary)

    @property
    def log(self) -> Any:
        return self.nginx.prefix / ACCESS_LOG

    def url(self, upstream: str) -> str:
        return f"{self.nginx.url}/{upstream}/"

    def slot_map(self) -> Any:
        from pipeline_steps.analysis import SlotMap

        return SlotMap({name: {stable.address: "stable", canary.address: "canary"}
                        for name, (stable, canary) in self.pairs.items()})


def site_text(pairs: dict[str, tuple[Backend, Backend]], canary_percent: float) -> tuple[str, str]:
    """(server block for testbed.nginx.start_nginx, include text): ps's include with the ps_json
    log_format and one upstream per pair at the canary weight, rendered through crossplane."""
    from pipeline_steps.analysis import access_log_directive, log_format_directive
    from pipeline_steps.upstreams import (
        PASSIVE_CHECK,
        ServerLine,
        Upstream,
        UpstreamFile,
        put_directive,
        render_directives,
    )
    from pipeline_steps.weights import Weights

    weights = Weights.from_percent(canary_percent, 1000, 1)
    include = UpstreamFile(path=ACCESS_LOG)  # type: ignore[arg-type]
    for name, (stable, canary) in pairs.items():
        include.put(Upstream(name, [ServerLine(stable.address, weight=weights.stable, params=PASSIVE_CHECK),
                                    ServerLine(canary.address, weight=weights.canary, params=PASSIVE_CHECK)],
                             [{"directive": "keepalive", "args": ["16"]}]))
    put_directive(include, log_format_directive())
    locations = "".join(f"        location /{n}/ {{ proxy_pass http://{n}; }}\n" for n in pairs)
    from testbed.ports import address

    servers = ("    server {\n        listen " + address() + ":{port};\n{proxy_defaults}        "
               + render_directives([access_log_directive(ACCESS_LOG)]) + locations + "    }\n")
    return servers, include.render()


def start_judged_site(start: Any, pairs: dict[str, tuple[Backend, Backend]],
                      canary_percent: float = 10) -> JudgedSite:
    """Start nginx (`start(servers, upstreams)`, e.g. testbed.nginx.start_nginx) for the pairs."""
    servers, include = site_text(pairs, canary_percent)
    return JudgedSite(start(servers, include), pairs)


@dataclass
class Look:
    """One look during a live hold: when (seconds after the step started), on how many requests."""

    elapsed: float
    requests: int  # judged requests of the upstream (both slots)
    judgement: Any  # pipeline_steps.analysis.Judgement


def watch(analysis: Any, load: Any, upstream: str, *, every: int = 100, stop_on_fail: bool = True,
          deadline: float = 60.0) -> list[Look]:
    """Look each time `every` more requests of `upstream` are in the log while `load` (a started
    testbed.load.LoadGenerator) runs; a last look after it ends. Stops at the first fail (unless
    `stop_on_fail` is False), when the load ends, or after `deadline` seconds."""
    started = time.monotonic()
    looks: list[Look] = []
    mark = every

    def judged() -> int:
        return len(analysis.window.side(upstream, "canary")) + len(analysis.window.side(upstream, "stable"))

    def look() -> Look:
        result = [j for j in analysis.look() if j.upstream == upstream][0]
        looks.append(Look(round(time.monotonic() - started, 3), judged(), result))
        return looks[-1]

    while time.monotonic() - started < deadline:
        ended = not load.running
        analysis.read()
        if ended:  # nginx logs a request after its answer went out: wait for the last lines
            sent, settle = load.report().sent, time.monotonic() + 5
            while judged() < sent and time.monotonic() < settle:
                time.sleep(0.02)  # poll until the settle deadline
                analysis.read()
        if judged() >= mark or ended:
            mark = judged() + every
            if (look().judgement.decision == "fail" and stop_on_fail) or ended:
                break
        else:
            load.wait(timeout=0.05)  # returns early when the load ends
    return looks
