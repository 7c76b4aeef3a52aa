"""The test bed's per-run loopback address and ports (testbed.ports) and its waits (testbed.wait)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed import ports
from testbed.wait import pause_until, until

REPO = Path(__file__).resolve().parents[2]


def test_the_session_has_a_private_loopback_pair_exported_to_subprocesses() -> None:
    first, second = ports.address(), ports.second_address()
    assert first != "127.0.0.1" and first != second
    assert ipaddress.ip_address(first).is_loopback and ipaddress.ip_address(second).is_loopback
    assert os.environ[ports.ENV] == first and os.environ[ports.ENV2] == second
    child = subprocess.run([sys.executable, "-c", "from testbed.ports import address, second_address;"
                            "print(address(), second_address())"],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                           check=True)
    assert child.stdout.split() == [first, second]  # the same run: no new claim


def test_another_run_draws_another_pair() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (ports.ENV, ports.ENV2)}
    script = "from testbed.ports import address, second_address; print(address(), second_address())"
    procs = [subprocess.Popen([sys.executable, "-c", script + "; import sys; sys.stdin.read()"],
                              env={**env, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        pairs = [tuple(p.stdout.readline().split()) for p in procs if p.stdout]
    finally:
        for p in procs:
            p.communicate("", timeout=10)
    taken = {a for pair in pairs for a in pair}
    assert len(taken) == 6 and ports.address() not in taken  # every run holds its own pair


def test_a_claimed_address_is_refused_to_a_second_claimer() -> None:
    assert ports._claim(ports.address()) is None  # this run holds CLAIM_PORT on it


def test_ports_are_never_handed_out_twice_in_a_run_and_are_free() -> None:
    got = ports.free_ports(50)
    assert len(set(got)) == 50
    assert all(ports.FIRST_PORT <= p <= ports.LAST_PORT for p in got)
    for port in got[:5]:
        with socket.socket() as sock:
            sock.bind((ports.address(), port))


def test_a_port_in_use_is_skipped() -> None:
    with ports.held_port() as held:
        with open(ports._counter(ports.address()), "w") as fh:
            fh.write(str(held - 1))  # the counter's next candidate is the held port
        assert ports.free_port() != held


def test_wait_port_and_until() -> None:
    with ports.held_port() as port:
        assert ports.wait_port(port, timeout=2)
    assert until(lambda: 0, 0.1) is None
    assert until(lambda: "yes", 0.1) == "yes"
    started = time.monotonic()
    pause_until(started + 0.05)
    assert time.monotonic() - started >= 0.05


def test_an_xdist_worker_forgets_the_pair_its_controller_drew_but_keeps_a_given_one() -> None:
    script = ("import os; from testbed.ports import address, forget_inherited; forget_inherited(); "
              "print(address(), os.environ['PS_TEST_ADDRESS_PID'] if 'PS_TEST_ADDRESS_PID' in os.environ "
              "else '-')")
    ports.address()
    base = {**os.environ, "PYTHONPATH": str(REPO), ports.ENV_PID: str(os.getpid())}  # as drawn here
    drawn = subprocess.run([sys.executable, "-c", script], env=base, capture_output=True, text=True,
                           check=True).stdout.split()
    assert drawn[0] != ports.address() and drawn[1] != str(os.getpid())  # the child drew its own
    given = {k: v for k, v in base.items() if k != ports.ENV_PID}
    kept = subprocess.run([sys.executable, "-c", script], env=given, capture_output=True, text=True,
                          check=True).stdout.split()
    assert kept == [ports.address(), "-"]  # PS_TEST_ADDRESS given by hand: shared, not redrawn
