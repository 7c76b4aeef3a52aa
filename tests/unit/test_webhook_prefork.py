"""The supervisor of `serve --workers N` (webhook/prefork.py), in a Python process of its own (it forks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from testbed.wait import until

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pipeline_steps.webhook.prefork import Supervisor, listen_socket

    def child(role, sock, pipe):
        os.write(1, f"child {role} {os.getpid()}\\n".encode())  # one write: lines never interleave
        if sys.argv[1] == "crash":
            return 3
        while True:
            signal.pause()  # until the supervisor's signal ends this child

    def log(line):
        os.write(1, f"{line}\\n".encode())

    sock = listen_socket("127.0.0.1", 0, 128)
    sys.exit(Supervisor(2, sock, child, log).run())
""")


def _start(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_children_that_keep_ending_stop_the_supervisor_with_exit_1() -> None:
    proc = _start("crash")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert out.count("ended (exit code 3): starting another") == 4
    assert "stopping" in out


def test_sigterm_stops_every_child_and_a_child_ends_with_its_parent() -> None:
    proc = _start("wait")
    lines: list[str] = []
    assert proc.stdout is not None
    while len([line for line in lines if line.startswith("child ")]) < 3:
        line = proc.stdout.readline()
        assert line, lines
        lines.append(line)
    pids = [int(line.split()[2]) for line in lines if line.startswith("child ")]
    assert sorted(line.split()[1] for line in lines if line.startswith("child ")) == [
        "actor", "receiver", "receiver"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)

    # kill -9 of the supervisor alone: its children get SIGTERM (PR_SET_PDEATHSIG) and end
    proc = _start("wait")
    assert proc.stdout is not None
    children = []
    while len(children) < 3:
        line = proc.stdout.readline()
        assert line
        if line.startswith("child "):
            children.append(int(line.split()[2]))
    proc.kill()
    proc.wait(timeout=10)

    def gone() -> bool:
        for pid in children:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                return False
        return True

    assert until(gone, 10)
