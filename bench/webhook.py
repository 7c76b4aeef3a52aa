"""How fast and how steady is `ps webhook serve` under a burst of GitLab deliveries?

The real receiver (`python -m pipeline_steps webhook serve --action jenkins`, a local Jenkins stub answering
201) gets distinct push deliveries from 100 concurrent connections, one new connection per delivery as
GitLab opens them: wrk runs of `--seconds` (bench/webhook_push.lua) until `--deliveries` are in.
Figures: deliveries per second, time to the 200 (median of the runs' medians, worst p99), socket errors
(resets, refused, timeouts), /healthz latency meanwhile, the receiver's CPU per delivery, and its RSS after
100 deliveries against its RSS after all of them (no growth per delivery). Then the burst case: 100
connections each sending one delivery at the same moment to an idle receiver (bench/burst.c), repeated
(`--bursts`, the receiver drained between them): time to the 200 (median, p99) over all of them.
Baselines in the same run, as many processes on one socket, behind the same clients: a bare uvicorn app
answering 200 (no store, no parsing) with the receiver's server settings (the floor of its server), and a
bare waitress app with 16 threads (the server the receiver had before, at its floor). Goal: 0 resets,
p99 < 50 ms for the burst, RSS within 10 %. Measured for each `--workers` count (default 1 and 2:
`serve --workers N`, N receiving processes and one acting process; CPU and RSS are the whole process
tree's).

The clients are C (wrk, installed with apt-get when missing; burst.c, compiled with cc): on a 2-core
machine a Python client competes with the server for the CPU and inflates its latencies.

Run from the repo root: .venv/bin/python bench/webhook.py [--deliveries 10000] [--concurrency 100]
[--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
THREADS = 16  # the threads the receiver's waitress had (its previous server: the second baseline)
WRK_THREADS = 2
HERE = Path(__file__).resolve().parent

BARE_APP = """
import os, socket, sys
from waitress import create_server
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[2], int(sys.argv[1])))
sock.listen(1024)
for _ in range(int(sys.argv[4]) - 1):  # as many processes on the one socket as the receiver has
    if os.fork() == 0:
        break
create_server(app, sockets=[sock], threads=int(sys.argv[3]), backlog=1024, connection_limit=256,
              channel_timeout=30, asyncore_use_poll=True).run()
"""
BARE_UVICORN = """
import os, socket, sys
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[2], int(sys.argv[1])))
sock.listen(1024)
for _ in range(int(sys.argv[3]) - 1):
    if os.fork() == 0:
        break
uvicorn.Server(uvicorn.Config(app, interface="asgi3", http="httptools", loop="auto", lifespan="off",
                              log_config=None, access_log=False, limit_concurrency=1024,
                              timeout_keep_alive=30)).run(sockets=[sock])
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


def install_wrk() -> str:
    """wrk, the C load generator of the closed loop (Debian's package, installed here as
    scripts/install-system installs the suite's packages: apt-get, with sudo when not root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install wrk): the closed loop's load generator", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    assert found, "wrk did not install"
    return found


def build_burst_client(tmp: str) -> str:
    """bench/burst.c compiled (cc -O2) into `tmp`."""
    out = f"{tmp}/burst"
    subprocess.run(["cc", "-O2", "-o", out, str(HERE / "burst.c")], check=True)
    return out


class Prober(threading.Thread):
    """GET /healthz every 50 ms while a load runs; the time to each 200 (a new connection each)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.times = port, []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            started = time.perf_counter()
            try:
                with socket.create_connection((address(), self.port), timeout=TIMEOUT) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        self.times.append(time.perf_counter() - started)
            except OSError:
                pass


_RUNS = iter(range(1, 1 << 30))


def closed_loop(wrk: str, port: int, pid: int, seconds: int, conc: int,
                branch: str = "develop") -> dict[str, Any]:
    """wrk: `conc` connections, each sending distinct deliveries one after the other (a new connection
    each) for `seconds`; its figures and the server's CPU per request meanwhile."""
    env = {**os.environ, "WRK_TOKEN": TOKEN, "WRK_BRANCH": branch,
           "WRK_RUN": str(int(time.time()) % 100000 * 1000 + next(_RUNS))}
    cpu_before = cpu_s(pid)
    done = subprocess.run([wrk, f"-t{WRK_THREADS}", f"-c{conc}", f"-d{seconds}s",
                           f"--timeout={int(TIMEOUT)}s", "-s", str(HERE / "webhook_push.lua"),
                           f"http://{address()}:{port}/"],
                          env=env, check=True, capture_output=True, text=True)
    cpu = cpu_s(pid) - cpu_before
    got = json.loads(done.stdout.strip().splitlines()[-1])
    errors = {k: got[k] for k in ("connect", "read", "write", "status", "timeout") if got[k]}
    return {"requests": got["requests"], "per_second": round(got["requests"] / got["duration_us"] * 1e6, 1),
            "median_ms": round(got["p50_us"] / 1000, 2), "p99_ms": round(got["p99_us"] / 1000, 2),
            "max_ms": round(got["max_us"] / 1000, 2), "socket_errors": errors,
            "cpu_ms_per_request": round(cpu / max(1, got["requests"]) * 1000, 3)}


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several closed-loop runs as one figure: rate over all, the median run's median, the worst p99."""
    total = sum(r["requests"] for r in runs)
    seconds = sum(r["requests"] / r["per_second"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["socket_errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"requests": total, "runs": len(runs), "per_second": round(total / seconds, 1),
            "median_ms": round(statistics.median(r["median_ms"] for r in runs), 2),
            "p99_ms": max(r["p99_ms"] for r in runs), "max_ms": max(r["max_ms"] for r in runs),
            "socket_errors": errors,
            "cpu_ms_per_request": round(sum(r["cpu_ms_per_request"] * r["requests"] for r in runs) / total,
                                        3)}


def at_once_c(client: str, port: int, first: int, count: int, branch: str = "develop") -> dict[str, Any]:
    """bench/burst.c: `count` connections opened and sent at the same moment, one delivery each."""
    started = time.perf_counter()
    done = subprocess.run([client, address(), str(port), str(count), str(first), TOKEN, f"burst-{first}",
                           branch], check=True, capture_output=True, text=True)
    times: list[float] = []
    outcomes: dict[str, int] = {}
    for line in done.stdout.splitlines():
        outcome, _, micros = line.partition(" ") if line.startswith("ok ") else (line, "", "")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            times.append(int(micros) / 1e6)
    return {"wall_s": time.perf_counter() - started, "times": times, "outcomes": outcomes}


def bursts(client: str, port: int, first: int, rounds: int, size: int, drain: bool) -> dict[str, Any]:
    """`rounds` bursts of `size` at once (each after the receiver drained, when `drain`); merged figures."""
    merged: dict[str, Any] = {"wall_s": 0.0, "times": [], "outcomes": {}}
    for r in range(rounds):
        if drain:
            assert wait_drained(port, time.monotonic() + 60)
        else:
            time.sleep(0.2)
        run = at_once_c(client, port, first + r * size, size)
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


def tree(pid: int) -> list[int]:
    """A process and its live children (the receiver's supervisor and its processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for child in children for p in tree(int(child)))]


def rss_kib(pid: int) -> int:
    """The RSS of a process and its children, summed."""
    total = 0
    for member in tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process and its live children have used (load on the machine does
    not change this)."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM (to the whole process group with `group`), SIGKILL after 15 s."""
    import signal

    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=5)


def bare_baseline(program: list[str], env: dict[str, str], wrk: str, client: str, secs: int, conc: int,
                  rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bare app (`python -c PROGRAM PORT ADDRESS ARGS...`): its closed-loop and burst figures."""
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", program[0], str(port), address(), *program[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_port(port, timeout=15), "the bare baseline app did not listen"
        loop = merged([closed_loop(wrk, port, bare.pid, secs, conc) for _ in range(2)])
        return loop, summary(bursts(client, port, 0, rounds, conc, drain=False), rounds * conc)
    finally:
        stop(bare, group=True)


def measure(workers: int, wrk: str, client: str, tmp: str, jenkins_port: int, n: int, conc: int, secs: int,
            rounds: int) -> dict[str, Any]:
    """The bare baseline and the receiver, each with `workers` processes on the socket: their figures."""
    env = {**os.environ, "WEBHOOK_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    base_uvicorn = bare_baseline([BARE_UVICORN, str(workers)], env, wrk, client, secs, conc, rounds)
    base_waitress = bare_baseline([BARE_APP, str(THREADS), str(workers)], env, wrk, client, secs, conc,
                                  rounds)
    baseline, baseline_burst = base_uvicorn

    port = free_port()
    state = f"{tmp}/w{workers}"
    env["XDG_STATE_HOME"] = state
    triggers_before = _Jenkins.triggers
    receiver = subprocess.Popen(
        [sys.executable, "-m", "pipeline_steps", "webhook", "serve", "--host", address(),
         "--port", str(port), "--db", f"{state}/deliveries.sqlite3", "--action", "jenkins",
         "--jenkins-url", f"http://{address()}:{jenkins_port}", "--jenkins-job", "deploy",
         "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_port(port, timeout=15), "ps webhook serve did not listen"
        warm = summary(at_once_c(client, port, 0, 100), 100)
        assert wait_drained(port, time.monotonic() + 60)
        rss_100 = rss_kib(receiver.pid)
        prober = Prober(port)
        prober.start()
        runs: list[dict[str, Any]] = []
        rss_half = 0
        while sum(r["requests"] for r in runs) < n:
            runs.append(closed_loop(wrk, port, receiver.pid, secs, conc))
            if not rss_half and sum(r["requests"] for r in runs) >= n // 2:
                assert wait_drained(port, time.monotonic() + 120)
                rss_half = rss_kib(receiver.pid)
        prober.done.set()
        prober.join()
        drained = wait_drained(port, time.monotonic() + 120)
        rss_n = rss_kib(receiver.pid)
        triggers = _Jenkins.triggers - triggers_before
        # the receiving path alone: pushes of a branch that does not deploy (recorded, not acted on)
        ignored = closed_loop(wrk, port, receiver.pid, secs, conc, branch="feature")
        at_once_run = summary(bursts(client, port, 10**9, rounds, conc, drain=True), rounds * conc)
    finally:
        stop(receiver, group=True)

    measured = merged(runs)
    errors = (sum(measured["socket_errors"].values()) + sum(ignored["socket_errors"].values())
              + sum(v for part in (warm, at_once_run) for k, v in part["outcomes"].items() if k != "ok"))
    growth = (rss_n - rss_100) / rss_100
    health = sorted(prober.times)
    return {
        "workers": workers,
        "receiver": measured,
        "jenkins_triggers": triggers,
        "receiver_not_acting": ignored,
        "baseline_bare_uvicorn": {**baseline, "processes": workers},
        "baseline_bare_waitress_16_threads": {**base_waitress[0], "processes": workers},
        f"burst_{conc}_at_once_x{rounds}": at_once_run,
        f"baseline_uvicorn_burst_{conc}_at_once_x{rounds}": baseline_burst,
        f"baseline_waitress_burst_{conc}_at_once_x{rounds}": base_waitress[1],
        "burst_p99_ratio": round(at_once_run["p99_ms"] / baseline_burst["p99_ms"], 2),
        "burst_p99_ratio_to_bare_waitress": round(at_once_run["p99_ms"] / base_waitress[1]["p99_ms"], 2),
        "per_second_ratio": round(measured["per_second"] / baseline["per_second"], 3),
        "errors_or_resets": errors,
        "healthz_under_load_ms": {
            "probes": len(health),
            "median": round(statistics.median(health) * 1000, 2) if health else None,
            "max": round(health[-1] * 1000, 2) if health else None},
        "rss_kib_after_100": rss_100,
        "rss_kib_after_half": rss_half,
        "rss_kib_after_all": rss_n,
        "rss_growth": round(growth, 4),
        "drained": drained,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "met": errors == 0 and at_once_run["p99_ms"] < P99_GOAL_MS and abs(growth) <= RSS_GOAL and drained,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deliveries", type=int, default=10_000, help="closed-loop deliveries (at least)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=4, help="length of one wrk run")
    parser.add_argument("--bursts", type=int, default=10, help="rounds of --concurrency deliveries at once")
    parser.add_argument("--workers", default="1,2", help="receiving process counts to measure (comma list)")
    args = parser.parse_args()
    n, conc, secs = max(200, args.deliveries), max(1, args.concurrency), max(1, args.seconds)
    counts = [max(1, int(w)) for w in args.workers.split(",") if w.strip()]
    wrk = install_wrk()  # an explicit step: the one tool the bench may have to install

    jenkins = ThreadingHTTPServer((address(), 0), _Jenkins)
    threading.Thread(target=jenkins.serve_forever, daemon=True).start()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="ps-bench-webhook-") as tmp:
        client = build_burst_client(tmp)
        figures = {f"workers_{w}": measure(w, wrk, client, tmp, jenkins.server_address[1], n, conc, secs,
                                           args.bursts) for w in counts}
    jenkins.shutdown()
    result = {
        "figure": f"ps webhook serve: {n}+ push deliveries from {conc} connections at once, "
                  f"--workers {', '.join(map(str, counts))}",
        "clients": "closed loop: wrk (C) with bench/webhook_push.lua; bursts: bench/burst.c",
        **figures,
        "load_average_1m_before": load_before,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "goals": {"resets": 0, "p99_ms": P99_GOAL_MS, "rss_growth": RSS_GOAL},
        "met": any(f["met"] for f in figures.values()),
    }
    path = write_result("webhook", result)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
