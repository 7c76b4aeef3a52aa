"""`ps switch` blue/green against a real nginx and real sample-app slots."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from testbed.load import slots_answering
from testbed.ports import address

TrafficBed = Any  # the traffic_bed fixture of tests/integration/conftest.py


def test_switch_and_backup_takes_over(traffic_bed: Callable[..., TrafficBed], run_sample: Any,
                                      ps: Any) -> None:
    bed = traffic_bed({"web": "blue-green"})
    containers = {slot: run_sample(port=port, PS_SLOT=slot)[0] for slot, port in bed.ports["web"].items()}
    url = bed.url("web")
    assert slots_answering(url, 20) == {"blue": 20}  # first include: blue active
    done = ps("--json", "switch", "--to", "green")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["services"][0]["after"] == "green active, blue backup"
    text = bed.include_text()
    # issue 9: no passive check on ps's servers (was `backup max_fails=3 fail_timeout=30s`)
    assert f"{address()}:{bed.ports['web']['blue']} max_fails=0 backup;" in text
    assert slots_answering(url, 20) == {"green": 20}
    probe = ps("verify-weights", "--expect-active", "green", "--probe", "50", "--url", url)
    assert probe.returncode == 0, probe.stderr
    wrong = ps("verify-weights", "--expect-active", "blue")
    assert wrong.returncode == 1 and "active color is green, expected blue" in wrong.stderr
    # the active container dies: nginx's backup (blue) answers every request
    containers["green"].kill()
    assert slots_answering(url, 20) == {"blue": 20}
    again = ps("switch", "--to", "green")
    assert again.returncode == 0 and "no change" in again.stdout
    back = ps("switch", "--to", "blue", "--service", "web")
    assert back.returncode == 0
    assert slots_answering(url, 10) == {"blue": 10}


def test_switch_dry_run_changes_nothing(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    bed = traffic_bed({"web": "blue-green", "api": "blue-green"})
    before = bed.include_text()
    done = ps("--dry-run", "switch", "--to", "green")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout and "web: blue active, green backup -> green active" in done.stdout
    assert bed.include_text() == before
    both = ps("switch", "--to", "green")
    assert both.returncode == 0
    assert bed.include_text().count("backup") == 2
