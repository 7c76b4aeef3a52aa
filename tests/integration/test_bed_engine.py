"""The bed engine (when no engine answers): every process of every run shares one dockerd; the last run to
end stops it.

As on CI, where nothing listens on /var/run/docker.sock: three "workers" (child processes of this run)
ask for the engine at once; exactly one dockerd starts, all three get its socket, it outlives the worker
that started it, and stop_run_engine() in the top process stops it. With a second run still using it (a
worker of that run alive), the first run's end leaves it running, and the second run's end stops it.
The dockerd here lives in a directory of the test's own (PS_BED_ENGINE_DIR), on a bridge of its own and
with no iptables rules, so it never touches the suite's engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.engine import (
    ENGINE_DIR_ENV,
    RUN_ENV,
    _answers,
    _gone,
    _users,
    engine_dir,
    private_bridge,
    stop_run_engine,
)
from testbed.wait import until

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import sys
from testbed.engine import run_engine, start_dockerd

def start(root):
    return start_dockerd(root, bridge=sys.argv[1], extra_args=["--iptables=false", "--ip-masq=false"])

print(run_engine(start, look=False).base_url, flush=True)
if sys.argv[2:] == ["stay"]:
    sys.stdin.read()  # a worker still running tests: it uses the engine until it ends
"""


def _worker(bridge: str, run: str, stay: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), RUN_ENV: run}
    return subprocess.Popen([sys.executable, "-c", WORKER, bridge, *(["stay"] if stay else [])], env=env,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def own_bed(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process as a fresh run's top, with a bed engine directory of its own; the run's id. The
    directory is short (/tmp/psbed-*): containerd's sockets under it must stay within 104 characters."""
    run = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    bed = tempfile.mkdtemp(prefix="psbed-")
    monkeypatch.setenv(RUN_ENV, run)
    monkeypatch.setenv(ENGINE_DIR_ENV, bed)
    yield run
    shutil.rmtree(bed, ignore_errors=True)


@pytest.mark.docker
def test_workers_share_one_started_engine_and_the_top_process_stops_it(engine: Any, own_bed: str) -> None:
    here = engine_dir()
    held = set(_users)  # this worker's own hold on the suite's bed engine (on CI), which must stay
    with private_bridge() as bridge:
        try:
            workers = [_worker(bridge, own_bed) for _ in range(3)]
            outputs = [w.communicate(timeout=120) for w in workers]
            assert all(w.returncode == 0 for w in workers), [err[-800:] for _, err in outputs]
            urls = {out.strip() for out, _ in outputs}
            assert len(urls) == 1, urls  # one engine for every worker
            info = json.loads((here / "engine.json").read_text())
            assert urls == {info["base_url"]} and info["base_url"].startswith(f"unix://{here}/")
            assert not _gone(info["pid"]) and _answers(info["base_url"])  # outlives the workers
        finally:
            stop_run_engine()
        assert until(lambda: _gone(info["pid"]), 10), "the bed dockerd still runs"
        assert not (here / "engine.json").exists() and not Path(info["root"]).exists()
        assert set(_users) == held  # stopping this bed let go of its lock only


@pytest.mark.docker
def test_two_runs_share_the_engine_and_the_last_to_end_stops_it(own_bed: str) -> None:
    here = engine_dir()
    with private_bridge() as bridge:
        other = _worker(bridge, f"1-{uuid.uuid4().hex[:8]}", stay=True)  # a worker of another run
        try:
            assert other.stdout is not None
            theirs = other.stdout.readline().strip()
            ours, err = _worker(bridge, own_bed).communicate(timeout=120)
            assert ours.strip() == theirs and theirs.startswith(f"unix://{here}/"), err[-800:]
            info = json.loads((here / "engine.json").read_text())
            stop_run_engine()  # this run ends first: the other run's worker still uses the engine
            assert _answers(info["base_url"]) and (here / "engine.json").exists()
        finally:
            other.communicate(timeout=30)  # that worker ends too
        stop_run_engine()  # the last run ends (its top process: here again)
        assert until(lambda: _gone(info["pid"]), 10), "the bed dockerd still runs"
        assert not (here / "engine.json").exists()
