"""How fast and how steady is `ps webhook serve` under a burst of GitLab deliveries?

The real receiver (`python -m pipeline_steps webhook serve --action jenkins`, a local Jenkins stub answering
201) gets N distinct push deliveries from 100 concurrent connections, one new connection per delivery as
GitLab opens them. Figures: deliveries per second, time to the 200 (median, p99), connections reset or
refused, /healthz latency while the burst runs, and the receiver's RSS after 100 deliveries against its RSS
after all N (no growth per delivery). Then the burst case: 100 connections each sending one delivery at
the same moment to an idle receiver, repeated (`--bursts`, the receiver drained between them): time to the
200 (median, p99) over all of them. Baseline in the same run: a bare waitress app answering 200 (no
store, no parsing) behind the same client, concurrency and bursts. Goal: 0 resets, p99 < 50 ms for the
burst, RSS within 10 %.

Run from the repo root: .venv/bin/python bench/webhook.py [--deliveries 10000] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.bench import write_result  # noqa: E402
from testbed.ports import address, free_port, wait_port  # noqa: E402

TOKEN = "bench-webhook-token-0123456789"
P99_GOAL_MS = 50.0
RSS_GOAL = 0.10
TIMEOUT = 10.0

BARE_APP = """
import sys
from waitress import serve
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
serve(app, host=sys.argv[2], port=int(sys.argv[1]), threads=8, backlog=1024, connection_limit=256,
      asyncore_use_poll=True, _quiet=True)
"""


class _Jenkins(BaseHTTPRequestHandler):
    """buildWithParameters -> 201; the queue and builds look-ups -> empty."""

    triggers = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Jenkins.triggers += 1
        self.send_response(201)
        self.send_header("Location", "/queue/item/1/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        data = b'{"items": [], "builds": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def push(i: int, branch: str = "develop") -> bytes:
    sha = f"{i:040x}"
    return json.dumps({"object_kind": "push", "ref": f"refs/heads/{branch}", "before": "f" * 40, "after": sha,
                       "checkout_sha": sha, "user_username": "bench",
                       "project": {"id": 1, "path_with_namespace": "team/app"}}).encode()


def request(port: int, i: int, branch: str = "develop") -> bytes:
    body = push(i, branch)
    return (f"POST / HTTP/1.1\r\nHost: {address()}:{port}\r\nContent-Type: application/json\r\n"
            f"X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: {TOKEN}\r\nX-Gitlab-Event-UUID: bench-{i}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def one(port: int, data: bytes) -> tuple[str, float]:
    """('ok' | 'reset' | 'refused' | 'timeout' | 'status NNN', seconds to the status line)."""
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address(), port), TIMEOUT)
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        took = time.perf_counter() - started
        await asyncio.wait_for(reader.read(), TIMEOUT)  # the rest, up to the server's close
        status = line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "none"
        return ("ok" if status == "200" else f"status {status}"), took
    except ConnectionResetError:
        return "reset", time.perf_counter() - started
    except ConnectionRefusedError:
        return "refused", time.perf_counter() - started
    except TimeoutError:
        return "timeout", time.perf_counter() - started
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - started
    finally:
        if writer is not None:
            writer.close()


async def burst(port: int, first: int, count: int, concurrency: int,
                health: list[float] | None = None, branch: str = "develop") -> dict[str, Any]:
    """`count` deliveries from `concurrency` connections at a time; /healthz probed meanwhile."""
    queue = iter(range(first, first + count))
    times: list[float] = []
    outcomes: dict[str, int] = {}
    done = asyncio.Event()

    async def worker() -> None:
        for i in queue:
            outcome, took = await one(port, request(port, i, branch))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "ok":
                times.append(took)

    async def prober() -> None:
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        while not done.is_set():
            outcome, took = await one(port, probe)
            if health is not None and outcome == "ok":
                health.append(took)
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    probing = asyncio.create_task(prober())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    done.set()
    await probing
    return {"wall_s": wall, "times": times, "outcomes": outcomes}


def at_once(port: int, first: int, count: int) -> dict[str, Any]:
    """`count` connections opened and sent at the same moment, one delivery each; seconds from that moment
    to each status line. Plain non-blocking sockets, so the client's own cost stays far below the server's."""
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    pending: dict[socket.socket, bytes] = {}
    for i in range(first, first + count):
        new = socket.socket()
        new.setblocking(False)
        new.connect_ex((address(), port))
        pending[new] = request(port, i)
        sel.register(new, selectors.EVENT_WRITE)
    times: list[float] = []
    outcomes: dict[str, int] = {}
    got: dict[socket.socket, bytes] = {}
    deadline = started + TIMEOUT

    def settle(sock: socket.socket, outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            times.append(time.perf_counter() - started)
        sel.unregister(sock)
        sock.close()

    while sel.get_map() and time.perf_counter() < deadline:
        for key, events in sel.select(timeout=0.5):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if events & selectors.EVENT_WRITE:
                    sock.sendall(pending.pop(sock))  # a few hundred bytes: the socket buffer takes them
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                data = got.get(sock, b"") + sock.recv(4096)
            except ConnectionResetError:
                settle(sock, "reset")
                continue
            except ConnectionRefusedError:
                settle(sock, "refused")
                continue
            except OSError as exc:
                settle(sock, type(exc).__name__)
                continue
            if b"\r\n" in data or not data:
                status = data.split(b" ")[1].decode() if data.count(b" ") >= 1 else "none"
                settle(sock, "ok" if status == "200" else f"status {status}")
            else:
                got[sock] = data
    for left in list(sel.get_map().values()):
        settle(left.fileobj, "timeout")  # type: ignore[arg-type]
    return {"wall_s": time.perf_counter() - started, "times": times, "outcomes": outcomes}


def bursts(port: int, first: int, rounds: int, size: int, drain: bool) -> dict[str, Any]:
    """`rounds` bursts of `size` at once (each after the receiver drained, when `drain`); merged figures."""
    merged: dict[str, Any] = {"wall_s": 0.0, "times": [], "outcomes": {}}
    for r in range(rounds):
        if drain:
            assert wait_drained(port, time.monotonic() + 60)
        else:
            time.sleep(0.2)
        run = at_once(port, first + r * size, size)
        merged["wall_s"] += run["wall_s"]
        merged["times"] += run["times"]
        for k, v in run["outcomes"].items():
            merged["outcomes"][k] = merged["outcomes"].get(k, 0) + v
    return merged


def summary(run: dict[str, Any], count: int) -> dict[str, Any]:
    times = sorted(run["times"])
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
    return {"deliveries": count, "per_second": round(count / run["wall_s"], 1),
            "median_ms": round(statistics.median(times) * 1000, 2) if times else None,
            "p99_ms": round(p99 * 1000, 2), "max_ms": round(times[-1] * 1000, 2) if times else None,
            "outcomes": run["outcomes"]}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (load on the machine does not change this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_drained(port: int, deadline: float) -> bool:
    """Until the receiver has nothing waiting and nothing in flight (its worker's action ended too)."""
    import requests

    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{address()}:{port}/healthz", timeout=5).json()["pending"] == 0:
                rows = requests.get(f"http://{address()}:{port}/deliveries?limit=200", timeout=5,
                                    headers={"X-Gitlab-Token": TOKEN}).json()["deliveries"]
                if not any(row["status"] in ("pending", "running", "retry") for row in rows):
                    return True
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--baseline", type=int, default=5_000, help="requests to the bare waitress app")
    parser.add_argument("--bursts", type=int, default=10, help="rounds of --concurrency deliveries at once")
    args = parser.parse_args()
    n, conc = max(200, args.deliveries), max(1, args.concurrency)

    jenkins = ThreadingHTTPServer((address(), 0), _Jenkins)
    threading.Thread(target=jenkins.serve_forever, daemon=True).start()
    env = {**os.environ, "WEBHOOK_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="ps-bench-webhook-") as tmp:
        # baseline: bare waitress, same client
        base_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(base_port), address()], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_port(base_port, timeout=15), "bare waitress did not listen"
            cpu_before = cpu_s(bare.pid)
            baseline = summary(asyncio.run(burst(base_port, 0, args.baseline, conc)), args.baseline)
            baseline["cpu_ms_per_request"] = round((cpu_s(bare.pid) - cpu_before) / args.baseline * 1000, 3)
            baseline_burst = summary(bursts(base_port, 0, args.bursts, conc, drain=False), args.bursts * conc)
        finally:
            stop(bare)

        port = free_port()
        env["XDG_STATE_HOME"] = tmp
        receiver = subprocess.Popen(
            [sys.executable, "-m", "pipeline_steps", "webhook", "serve", "--host", address(),
             "--port", str(port), "--db", f"{tmp}/deliveries.sqlite3", "--action", "jenkins",
             "--jenkins-url", f"http://{address()}:{jenkins.server_address[1]}", "--jenkins-job", "deploy"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_port(port, timeout=15), "ps webhook serve did not listen"
            warm = asyncio.run(burst(port, 0, 100, conc))
            assert wait_drained(port, time.monotonic() + 60)
            rss_100 = rss_kib(receiver.pid)
            health: list[float] = []
            cpu_before = cpu_s(receiver.pid)
            half = n // 2
            first_half = asyncio.run(burst(port, 100, half - 100, conc, health))
            assert wait_drained(port, time.monotonic() + 120)
            rss_half = rss_kib(receiver.pid)
            second_half = asyncio.run(burst(port, half, n - half, conc, health))
            run = {"wall_s": first_half["wall_s"] + second_half["wall_s"],
                   "times": first_half["times"] + second_half["times"],
                   "outcomes": {k: first_half["outcomes"].get(k, 0) + second_half["outcomes"].get(k, 0)
                                for k in {*first_half["outcomes"], *second_half["outcomes"]}}}
            drained = wait_drained(port, time.monotonic() + 120)
            cpu_used = cpu_s(receiver.pid) - cpu_before
            rss_n = rss_kib(receiver.pid)
            triggers = _Jenkins.triggers
            # the receiving path alone: pushes of a branch that does not deploy (recorded, not acted on)
            cpu_before = cpu_s(receiver.pid)
            ignored = summary(asyncio.run(burst(port, n, 2000, conc, branch="feature")), 2000)
            ignored["cpu_ms_per_delivery"] = round((cpu_s(receiver.pid) - cpu_before) / 2000 * 1000, 3)
            at_once_run = summary(bursts(port, n + 2000, args.bursts, conc, drain=True), args.bursts * conc)
        finally:
            stop(receiver)
    jenkins.shutdown()

    measured = summary(run, n - 100)
    measured["cpu_ms_per_delivery"] = round(cpu_used / (n - 100) * 1000, 3)  # receiving + acting
    runs = (measured, warm, at_once_run)
    errors = sum(v for part in runs for k, v in part["outcomes"].items() if k != "ok")
    growth = (rss_n - rss_100) / rss_100
    health_sorted = sorted(health)
    result = {
        "figure": f"ps webhook serve: {n} push deliveries from {conc} concurrent connections",
        "receiver": measured,
        "jenkins_triggers": triggers,
        "receiver_not_acting": ignored,
        "baseline_bare_waitress": baseline,
        f"burst_{conc}_at_once_x{args.bursts}": at_once_run,
        f"baseline_burst_{conc}_at_once_x{args.bursts}": baseline_burst,
        "per_second_ratio": round(measured["per_second"] / baseline["per_second"], 3),
        "errors_or_resets": errors,
        "healthz_under_load_ms": {
            "probes": len(health),
            "median": round(statistics.median(health_sorted) * 1000, 2) if health else None,
            "max": round(health_sorted[-1] * 1000, 2) if health else None},
        "rss_kib_after_100": rss_100,
        f"rss_kib_after_{n // 2}": rss_half,
        f"rss_kib_after_{n}": rss_n,
        "rss_growth": round(growth, 4),
        "drained": drained,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "goals": {"resets": 0, "p99_ms": P99_GOAL_MS, "rss_growth": RSS_GOAL},
        "met": errors == 0 and at_once_run["p99_ms"] < P99_GOAL_MS and abs(growth) <= RSS_GOAL and drained,
    }
    path = write_result("webhook", result)
    print(json.dumps({k: v for k, v in result.items()}, indent=2))
    print(f"written to {path}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
