"""The webhook commands' helpers: the receiver's log line, the store the listing and retry open."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from pipeline_steps.cli.output import Output
from pipeline_steps.cli.webhook import existing_store, log_writer
from pipeline_steps.errors import BadInput
from pipeline_steps.secrets import register_secret
from pipeline_steps.webhook.httpd import cap_malloc_arenas
from pipeline_steps.webhook.store import PENDING, Delivery, DeliveryStore


def test_log_writer_masks_timestamps_and_flushes_each_line(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    register_secret("log-writer-secret-0123")
    log_writer(Output())("delivery one: token log-writer-secret-0123 seen")
    line = out.getvalue()
    assert line.endswith(" delivery one: token **** seen\n") and "log-writer-secret" not in line
    assert line[2] == ":" and line[5] == ":"  # HH:MM:SS first
    log_writer(Output(json_mode=True))("to stderr with --json")  # stdout belongs to the JSON
    assert err.getvalue().endswith(" to stderr with --json\n") and "stderr" not in out.getvalue()


def test_existing_store_refuses_a_missing_db_and_closes_after(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no deliveries database"):
        with existing_store(str(tmp_path / "none.sqlite3")):
            pass
    assert not (tmp_path / "none.sqlite3").exists()  # never a new empty one
    db = tmp_path / "d.sqlite3"
    store = DeliveryStore(db)
    store.add(Delivery("push", "refs/heads/develop", "develop", "a" * 40, None, None, key="k1",
                       received_at=1.0, status=PENDING))
    store.close()
    with existing_store(str(db)) as (path, opened):
        assert path == db and [d.key for d in opened.recent(5)] == ["k1"]
    with pytest.raises(Exception, match="closed"):
        opened.recent(5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_can_be_capped() -> None:
    assert cap_malloc_arenas(8) is True  # a cap of 8 for the test process: harmless


def test_log_writer_survives_a_closed_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    log_writer(Output())("delivery two: accepted")  # no exception: the delivery was recorded already
