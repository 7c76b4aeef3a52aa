"""The run's own dockerd (when no engine answers): xdist workers share one, the run's top process stops it.

As on CI, where nothing listens on /var/run/docker.sock: three "workers" (child processes of this run)
ask for the run's engine at once; exactly one dockerd starts, all three get its socket, it outlives the
worker that started it, and stop_run_engine() in the top process stops it and removes the run's directory.
The dockerd here gets a bridge of its own and no iptables rules, so it never touches the shared engine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from testbed.engine import RUN_ENV, _answers, _gone, private_bridge, run_dir, stop_run_engine
from testbed.wait import until

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import sys
from testbed.engine import run_engine, start_dockerd

def start(root):
    return start_dockerd(root, bridge=sys.argv[1], extra_args=["--iptables=false", "--ip-masq=false"])

print(run_engine(start, look=False).base_url, flush=True)
"""


@pytest.mark.docker
def test_workers_share_one_started_engine_and_the_top_process_stops_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_ENV, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")  # this process: a fresh run's top
    here = run_dir()
    with private_bridge() as bridge:
        try:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            workers = [subprocess.Popen([sys.executable, "-c", WORKER, bridge], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
            outputs = [w.communicate(timeout=120) for w in workers]
            assert all(w.returncode == 0 for w in workers), [err[-800:] for _, err in outputs]
            urls = {out.strip() for out, _ in outputs}
            assert len(urls) == 1, urls  # one engine for every worker
            info = json.loads((here / "engine.json").read_text())
            assert urls == {info["base_url"]} and info["base_url"].startswith(f"unix://{here}/")
            assert not _gone(info["pid"]) and _answers(info["base_url"])  # outlives the workers
        finally:
            stop_run_engine()
        assert until(lambda: _gone(info["pid"]), 10), "the run's dockerd still runs"
        assert not here.exists()
