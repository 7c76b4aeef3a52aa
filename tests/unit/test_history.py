"""The history log: concurrent appends never corrupt lines; reading filters; `ps history`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_steps.deploy.history import HistoryEntry, HistoryLog
from pipeline_steps.secrets import register_secret

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys
    from pipeline_steps.deploy.history import HistoryLog
    state_dir, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = HistoryLog(state_dir)
    print("ready", flush=True)
    sys.stdin.readline()  # all writers start together, so their appends really overlap
    for i in range(count):
        # 6 KB lines: larger than PIPE_BUF, so only the writer's own serialisation keeps them whole
        log.record(app="shop", type="canary-auto", result="ok", build_ids={"web/canary": writer},
                   weights={"web": i % 101}, who=writer, message=writer * (6000 // len(writer)), seq=i)
""")


def test_concurrent_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    writers, per_writer = 6, 250
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}", str(per_writer)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in range(writers)]
    assert [p.stdout.readline().strip() for p in procs if p.stdout] == ["ready"] * writers
    for p in procs:  # go: every writer is up and waiting
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    assert [p.wait(timeout=120) for p in procs] == [0] * writers
    raw = (tmp_path / "history.jsonl").read_bytes()
    lines = raw.splitlines()
    assert raw.endswith(b"\n") and len(lines) == writers * per_writer
    seen: Counter[tuple[str, int]] = Counter()
    for line in lines:
        data = json.loads(line)  # every single line is one whole JSON object
        seen[(data["who"], data["extra"]["seq"])] += 1
        assert data["message"] == data["who"] * (6000 // len(data["who"]))
    assert len(seen) == writers * per_writer and set(seen.values()) == {1}
    read = HistoryLog(tmp_path).read()
    assert read.total == writers * per_writer and read.corrupt == 0
    # each writer's own entries stay in the order it wrote them
    for n in range(writers):
        seqs = [e.extra["seq"] for e in read.entries if e.who == f"w{n}"]
        assert seqs == list(range(per_writer))


def test_read_filters_limits_and_keeps_order(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path, timezone="Asia/Seoul")
    for i, kind in enumerate(["stable", "canary-auto", "rollback", "canary-auto", "blue-green"]):
        log.record(app="shop", type=kind, result="ok", message=f"#{i}")
    log.record(app="other", type="stable", result="failed", message="#5")
    assert [e.message for e in log.read().entries] == [f"#{i}" for i in range(6)]
    assert [e.message for e in log.read(limit=2).entries] == ["#4", "#5"]
    assert [e.message for e in log.read(app="shop", type="canary-auto").entries] == ["#1", "#3"]
    assert [e.message for e in log.read(limit=1, app="shop").entries] == ["#4"]
    assert log.read(limit=0).entries == []
    assert log.read().entries[0].time.endswith("+09:00")


def test_missing_log_reads_empty_and_corrupt_lines_are_counted(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "nowhere")
    assert log.read().entries == [] and log.read().total == 0
    log = HistoryLog(tmp_path)
    log.record(app="shop", type="stable", result="ok")
    with open(log.path, "ab") as fh:
        fh.write(b'{"app": "shop", "type": "sta\n[1, 2]\n\n')
    log.record(app="shop", type="rollback", result="ok")
    read = log.read()
    assert [e.type for e in read.entries] == ["stable", "rollback"]
    assert (read.total, read.corrupt) == (4, 2)


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    secret = "hooks-s3cr3t-value-123"
    register_secret(secret)
    log = HistoryLog(tmp_path)
    log.record(app="shop", type="stable", result="failed",
               message=f"notify to https://chat.example.com/hooks/{secret} failed")
    assert secret not in log.path.read_text()
    assert "****" in log.read().entries[0].message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.text(max_size=200),
       weights=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 100), max_size=4),
       build_ids=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=20), max_size=4))
def test_any_entry_round_trips(tmp_path: Path, message: str, weights: dict[str, int],
                               build_ids: dict[str, str]) -> None:
    log = HistoryLog(tmp_path / "prop")
    written = log.record(app="shop", type="canary-manual", result="ok", message=message,
                         weights=weights, build_ids=build_ids, time="2026-01-01T00:00:00+09:00")
    back = log.read(limit=1).entries[0]
    assert back == written
    assert HistoryEntry.from_dict(json.loads(log.path.read_bytes().splitlines()[-1])) == written


# ---------------------------------------------------------------- the CLI


def write_config(project: Callable[..., Path]) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5000", "state_dir": "state", "timezone": "UTC",
             "services": {"web": {"context": ".", "slots": {"stable": 8081, "canary": 8082}}}})


def test_cli_history_table_filters_and_json(ps: Any, project: Callable[..., Path], workdir: Path) -> None:
    write_config(project)
    done = ps("history")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no deployment history for app shop"

    log = HistoryLog(workdir / "state")
    log.record(app="shop", type="stable", result="ok", build_ids={"web/stable": "1a2b3c4d5e6f"},
               weights={"web": 0}, who="alice", time="2026-03-01T10:00:00+00:00")
    log.record(app="shop", type="canary-auto", result="rolled-back",
               build_ids={"web/canary": "abcdefabcdef"}, weights={"web": 40}, who="bob",
               pipeline_url="https://gitlab.example.com/shop/-/pipelines/7",
               time="2026-03-01T11:00:00+00:00")
    log.record(app="other-app", type="stable", result="ok", time="2026-03-01T12:00:00+00:00")

    done = ps("history")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["TIME", "TYPE", "RESULT", "BUILD_IDS", "WEIGHTS", "WHO"]
    assert rows[1].split() == ["2026-03-01T10:00:00+00:00", "stable", "ok", "web/stable=1a2b3c4d5e6f",
                               "web:0%", "alice"]
    assert rows[2].split() == ["2026-03-01T11:00:00+00:00", "canary-auto", "rolled-back",
                               "web/canary=abcdefabcdef", "web:40%",
                               "https://gitlab.example.com/shop/-/pipelines/7"]
    assert len(rows) == 3  # other-app is not ours

    done = ps("history", "--type", "canary-auto")
    assert [r.split()[1] for r in done.stdout.splitlines()[1:]] == ["canary-auto"]
    done = ps("history", "--limit", "1")
    assert [r.split()[1] for r in done.stdout.splitlines()[1:]] == ["canary-auto"]

    done = ps("--json", "history", "-n", "5")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["step"] == "history" and data["ok"] is True and data["count"] == 2
    assert [e["type"] for e in data["entries"]] == ["stable", "canary-auto"]
    assert data["entries"][1]["weights"] == {"web": 40}


def test_cli_history_rejects_a_negative_limit(ps: Any, project: Callable[..., Path]) -> None:
    write_config(project)
    done = ps("history", "--limit", "-3")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_cli_history_warns_about_corrupt_lines(ps: Any, project: Callable[..., Path], workdir: Path) -> None:
    write_config(project)
    log = HistoryLog(workdir / "state")
    log.record(app="shop", type="stable", result="ok")
    with open(log.path, "ab") as fh:
        fh.write(b"not json\n")
    done = ps("history")
    assert done.returncode == 0
    assert "1 unreadable line(s) skipped" in done.stderr
