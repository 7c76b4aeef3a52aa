"""A tcp:// host over TLS with client certificates, against a real dockerd started with --tlsverify.

The bed's engine is host `one` (unix socket, slots on the run's address); host `two` is a dockerd of its
own (the `tls_engine` fixture, testbed.tls_engine) that answers TCP only with TLS and only to a client
certificate of its CA, with slots on the run's second address. Certificates are made for the run (the
`cryptography` package).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.ports import address, free_ports, second_address, unique
from testbed.tls_engine import TlsEngine

BUILD = "t1"
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


class Bed:
    """ps.yaml with host `one` (the bed's engine) and host `two` (the TLS engine, with `tls` as given)."""

    def __init__(self, app: str, ports: dict[str, int], repo: str, two: Any, certs: Path) -> None:
        self.app, self.ports, self.repo, self.two, self.certs = app, ports, repo, two, certs

    def container(self, slot: str = "stable") -> Any:
        return self.two.containers.get(f"{self.app}-backend-{slot}")


@pytest.fixture
def bed(engine: Any, docker_client: Any, tls_engine: TlsEngine, sample_image: str, project: Any,
        workdir: Path) -> Iterator[Callable[..., Bed]]:
    """`bed(tls={...}, docker=...)` writes ps.yaml; the client files are copied next to it (certs/)."""
    app = unique("tls")
    stable, canary = free_ports(2)
    repo = f"127.0.0.1:5999/{app}/backend"
    two = tls_engine.client()
    certs = workdir / "certs"
    certs.mkdir()
    pki = tls_engine.pki
    for src, name in ((pki.ca, "ca.pem"), (pki.cert, "cert.pem"), (pki.key, "key.pem"),
                      (pki.other_ca, "other-ca.pem"), (pki.other_cert, "other-cert.pem"),
                      (pki.other_key, "other-key.pem")):
        shutil.copy2(src, certs / name)  # keeps the keys' 0600
    image = docker_client.images.get(sample_image)
    for client in (docker_client, two):
        client.images.get(image.id).tag(repo, BUILD)

    def make(tls: dict[str, Any] | None = None, docker: str | None = None) -> Bed:
        host: dict[str, Any] = {"name": "two", "docker": docker or tls_engine.tcp_url,
                                "address": second_address()}
        if tls is not None:
            host["tls"] = tls
        project({
            "app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
            "hosts": [{"name": "one", "docker": engine.base_url, "address": address()}, host],
            "services": {"backend": {"context": ".", "slots": {"stable": stable, "canary": canary}}},
        })
        return Bed(app, {"stable": stable, "canary": canary}, repo, two, certs)

    yield make
    for client in (docker_client, two):
        for c in client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
            c.remove(force=True)
        try:
            client.images.remove(f"{repo}:{BUILD}")
        except Exception:
            pass
    two.close()


RIGHT = {"ca": "certs/ca.pem", "cert": "certs/cert.pem", "key": "certs/key.pem"}


def _one_line(done: Any, code: int, *needles: str) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "PRIVATE KEY" not in done.stderr + done.stdout
    return lines[0]


def _nothing_started(docker_client: Any, bed: Bed) -> None:
    for client in (docker_client, bed.two):
        assert client.containers.list(all=True, filters={"label": f"pipeline-steps.app={bed.app}"}) == []


def test_tls_host_with_client_certificates_runs_the_slot(bed: Callable[..., Bed], tls_engine: TlsEngine,
                                                         docker_ps: Any) -> None:
    b = bed(tls=RIGHT)
    # REQUESTS_CA_BUNDLE would replace the host's CA inside requests: ps keeps it out of the TLS session
    env = {"REQUESTS_CA_BUNDLE": SYSTEM_CAS, "CURL_CA_BUNDLE": SYSTEM_CAS}
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
    assert done.returncode == 0, done.stderr
    assert "host one:" in done.stdout and "host two:" in done.stdout
    assert "warning" not in done.stderr
    two = b.container()
    assert two.labels["pipeline-steps.build-id"] == BUILD and two.status == "running"
    answer = requests.get(f"http://{second_address()}:{b.ports['stable']}/", timeout=5)
    assert answer.status_code == 200 and answer.headers["X-Slot"] == "stable"
    status = docker_ps("--json", "status", env=env)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout.strip().splitlines()[-1])
    builds = {(s["host"], s["slot"]): (s["build_id"], s["state"]) for s in record["slots"]}
    assert builds[("one", "stable")] == builds[("two", "stable")] == (BUILD, "running")


def test_wrong_ca_is_unreachable_naming_the_host(bed: Callable[..., Bed], tls_engine: TlsEngine,
                                                 docker_client: Any, docker_ps: Any) -> None:
    b = bed(tls={**RIGHT, "ca": "certs/other-ca.pem"})
    for env in ({}, {"REQUESTS_CA_BUNDLE": SYSTEM_CAS}):
        done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
        line = _one_line(done, 3, "Docker engine of host two", tls_engine.tcp_url, "is unreachable",
                         "TLS certificate verify failed", "other-ca.pem")
        assert line.startswith("ps: ")
    _nothing_started(docker_client, b)
    status = docker_ps("status")
    assert status.returncode == 3 and "host two" in status.stderr and "verify failed" in status.stderr


@pytest.mark.parametrize(("tls", "needle"), [
    (None, "the engine speaks TLS on that port"),  # plain tcp:// to the TLS port
    ({"ca": "certs/ca.pem"}, "it wants a client certificate"),
    ({**RIGHT, "cert": "certs/other-cert.pem", "key": "certs/other-key.pem"},
     "does not accept the client certificate"),
], ids=["plain-tcp", "no-client-cert", "client-cert-of-another-ca"])
def test_no_or_foreign_client_certificate_is_unreachable(bed: Callable[..., Bed], tls_engine: TlsEngine,
                                                         docker_client: Any, docker_ps: Any,
                                                         tls: dict[str, Any] | None, needle: str) -> None:
    b = bed(tls=tls)
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
    _one_line(done, 3, "Docker engine of host two", tls_engine.tcp_url, needle)
    _nothing_started(docker_client, b)


def test_key_open_to_others_is_bad_config(bed: Callable[..., Bed], docker_client: Any,
                                          docker_ps: Any) -> None:
    b = bed(tls=RIGHT)
    (b.certs / "key.pem").chmod(0o644)
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
    _one_line(done, 2, "ps: ", "hosts[1].tls.key: is open to group or others (mode 0644)",
              f"chmod 600 {b.certs / 'key.pem'}")
    _nothing_started(docker_client, b)
    (b.certs / "key.pem").unlink()
    done = docker_ps("status")
    _one_line(done, 2, "hosts[1].tls.key: not found")


def test_docker_tls_env_reaches_the_default_and_configured_hosts(
        bed: Callable[..., Bed], tls_engine: TlsEngine, docker_ps: Any, project: Any, workdir: Path) -> None:
    b = bed(tls=None)  # host two: the TLS engine's tcp:// URL with no tls: the environment decides
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(b.certs)}
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
    assert done.returncode == 0, done.stderr
    assert b.container().labels["pipeline-steps.build-id"] == BUILD
    # the default host (no docker:) through DOCKER_HOST, as `docker` itself does
    project({"app": b.app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
             "hosts": [{"name": "local", "address": second_address()}],
             "services": {"backend": {"context": ".", "slots": b.ports}}})
    status = docker_ps("--json", "status", env={**env, "DOCKER_HOST": tls_engine.tcp_url})
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout.strip().splitlines()[-1])
    builds = {(s["host"], s["slot"]): (s["build_id"], s["state"]) for s in record["slots"]}
    assert builds[("local", "stable")] == (BUILD, "running")
    wrong = docker_ps("status", env={**env, "DOCKER_HOST": tls_engine.tcp_url,
                                     "DOCKER_CERT_PATH": str(workdir / "nowhere")})
    _one_line(wrong, 2, "host local: DOCKER_CERT_PATH", "ca.pem, cert.pem, key.pem missing there")


def test_plain_tcp_off_loopback_is_warned_once(project: Any, ps: Any) -> None:
    far, near = "tcp://10.255.1.9:2375", f"tcp://{address()}:2375"  # never connected: validate only
    project({"app": "shop", "registry": "127.0.0.1:5999",
             "hosts": [{"name": "far", "docker": far}, {"name": "near", "docker": near}],
             "services": {"backend": {"context": ".", "slots": {"stable": 18001, "canary": 18002}}}})
    done = ps("config", "validate")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: host far ({far}) is plain TCP without TLS: anyone who reaches that "
                        "port controls the engine (root on that machine); keep plain tcp:// for loopback "
                        "and trusted networks, or give the host tls: {ca, cert, key}"]
    assert ps("config", "validate", env={"DOCKER_TLS_VERIFY": "1"}).stderr == ""


# ---------------------------------------------------------------- TLS problems no dockerd can show


class _Stub:
    """A TCP server on the run's address: a TLS server with `cert`/`key`, or plain (answers HTTP 400)."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        import socket
        import ssl
        import threading

        self.context = None
        if cert and key:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server((address(), 0))
        self.url = f"tcp://{address()}:{self.sock.getsockname()[1]}"
        self.handshakes = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(5)
                if self.context is None:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                else:
                    with self.context.wrap_socket(conn, server_side=True):
                        self.handshakes += 1
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def _lone_host(project: Any, docker: str, tls: dict[str, Any]) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5999",
             "hosts": [{"name": "two", "docker": docker, "address": second_address(), "tls": tls}],
             "services": {"backend": {"context": ".", "slots": {"stable": 18001, "canary": 18002}}}})


def test_engine_certificate_for_another_address_is_unreachable(project: Any, ps: Any, workdir: Path) -> None:
    from testbed.tls_engine import make_pki

    pki = make_pki(workdir / "certs", "127.0.0.1")  # the run's address is never 127.0.0.1
    stub = _Stub(pki.server_cert, pki.server_key)
    try:
        _lone_host(project, stub.url, {"ca": str(pki.ca), "cert": str(pki.cert), "key": str(pki.key)})
        done = ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
        _one_line(done, 3, "Docker engine of host two", stub.url, "TLS certificate verify failed",
                  "not for that address", "subjectAltName")
    finally:
        stub.close()


def test_tls_against_a_plain_port_is_unreachable(project: Any, ps: Any, workdir: Path) -> None:
    from testbed.tls_engine import make_pki

    pki = make_pki(workdir / "certs", address())
    stub = _Stub()
    try:
        _lone_host(project, stub.url, {"ca": str(pki.ca), "cert": str(pki.cert), "key": str(pki.key)})
        done = ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
        _one_line(done, 3, "Docker engine of host two", stub.url, "no TLS answer on that port")
    finally:
        stub.close()


def test_a_job_pinned_to_one_of_two_hosts_runs_only_there(bed: Callable[..., Bed], docker_client: Any,
                                                          docker_ps: Any, workdir: Path) -> None:
    """Issue 11: an ETL job with `hosts: [two]` never runs on host one (it must not run twice)."""
    import subprocess
    import sys

    import yaml

    from testbed.wait import until

    b = bed(tls=RIGHT)
    raw = yaml.safe_load((workdir / "ps.yaml").read_text())
    raw["services"]["etl"] = {"context": ".", "kind": "job", "hosts": ["two"]}
    (workdir / "ps.yaml").write_text(yaml.safe_dump(raw))
    etl_repo = b.repo.rsplit("/", 1)[0] + "/etl"
    for client in (docker_client, b.two):
        client.images.get(f"{b.repo}:{BUILD}").tag(etl_repo, BUILD)
    jobs = {"label": [f"pipeline-steps.app={b.app}", "pipeline-steps.job=1"]}
    args = ["--json", "run", "etl", "--build-id", BUILD, "--", "sh", "-c", "echo etl ran; sleep 3"]
    run = subprocess.Popen([sys.executable, "-m", "pipeline_steps", *args], cwd=workdir, env=docker_ps.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = until(lambda: b.two.containers.list(filters=jobs), timeout=30)
        assert seen, "the job never appeared on host two"
        assert docker_client.containers.list(all=True, filters=jobs) == []  # never on host one
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["host"] == "two" and record["exit_code"] == 0 and "etl ran" in record["tail"]
    assert b.two.containers.list(all=True, filters=jobs) == []  # removed afterwards
    refused = docker_ps("run", "etl", "--build-id", BUILD, "--host", "one", "--", "true")
    assert refused.returncode == 2 and "ps: service etl runs only on two (its hosts:), not on one" in \
        refused.stderr
    for client in (docker_client, b.two):
        client.images.remove(f"{etl_repo}:{BUILD}")
