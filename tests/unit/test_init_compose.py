"""`ps init --from-compose` on a 20-service compose file (infra, workers, jobs, two HTTP services) with
anchors, merge keys, interpolation (.env and defaults) and `extends` from another file: the ps.yaml it
writes is one `ps config validate` accepts, and every service became what it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.compose import interpolate, load_compose
from pipeline_steps.config import load_config
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.init_compose import from_compose

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "compose"


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "stack")
    return tmp_path / "stack" / "docker-compose.yml"


def test_twenty_services_become_a_valid_ps_yaml(stack: Path, ps: Any, tmp_path: Path) -> None:
    done = ps("init", "--from-compose", str(stack), "--output", str(tmp_path / "ps.yaml"),
              env={"POSTGRES_PASSWORD": "from-the-shell-secret"})
    assert done.returncode == 0, done.stderr
    assert "from-the-shell-secret" not in (tmp_path / "ps.yaml").read_text() + done.stdout
    checked = ps("--config", str(tmp_path / "ps.yaml"), "config", "validate")
    assert checked.returncode == 0, checked.stderr
    config = load_config(tmp_path / "ps.yaml")
    kinds = {name: s.kind for name, s in config.services.items()}
    assert kinds == {"web": "http", "api": "http", "orders-consumer": "worker", "payments-consumer": "worker",
                     "audit-consumer": "worker", "cache-worker": "worker", "mailer": "worker",
                     "db-init": "job", "seeder": "job", "etl": "job", "reindex": "job"}
    assert len(load_compose(stack).services) == 20
    web, api, orders = config.service("web"), config.service("api"), config.service("orders-consumer")
    assert web.slots == {"stable": 3000, "canary": 3002}  # 3001 is grafana's
    assert api.slots == {"stable": 8091, "canary": 8092} and api.port == 8000  # API_PORT from .env
    assert api.run.user == "1000:1000" and api.env["LOG_LEVEL"] == "info"  # extends base.yml
    assert api.env_from == ("API_SECRET_KEY", "DATABASE_PASSWORD") and "DATABASE_PASSWORD" not in api.env
    assert [n.name for n in web.run.networks] == ["shopstack_backend", "shop-frontend"]
    assert [v.bind() for v in web.run.volumes] == ["uploads:/app/uploads:rw",
                                                   f"{stack.parent}/config:/app/config:ro"]
    assert web.run.stop_timeout == 90 and web.run.healthcheck is not None
    assert [r.name for r in web.requires] == ["api", "shopstack-redis-1"]
    assert orders.replicas == 3 and orders.run.memory == 256 * 1024 ** 2 and orders.run.cpus == 0.5
    assert orders.run.command == ("python", "-m", "consumer", "--group", "orders")
    assert [r.name for r in orders.requires] == ["shopstack-kafka-1"]
    assert config.service("payments-consumer").run.command == ("python", "-m", "consumer", "--group",
                                                               "payments")
    out = done.stdout
    assert "api: not carried over: cap_add" in out and "etl: not carried over: profiles" in out
    assert "mailer: env_file not carried over" in out
    assert "postgres: image postgres:16 is not built here" in out
    again = ps("init", "--from-compose", str(stack), "--output", str(tmp_path / "ps.yaml"))
    assert again.returncode == 2 and "exists: not overwritten" in again.stderr


def test_only_some_services_and_json(stack: Path, ps: Any, tmp_path: Path) -> None:
    done = ps("--json", "init", "--from-compose", str(stack), "-s", "web", "-s", "cache-worker",
              "--app", "shop", "--output", str(tmp_path / "two.yaml"))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["written"] and sorted(yaml.safe_load((tmp_path / "two.yaml").read_text())["services"]) == [
        "cache-worker", "web"]


@pytest.mark.parametrize(("edit", "expected"), [
    ({"services": {"web": {"build": ".", "ports": "not-a-list"}}}, "services.web.ports: 'not-a-list' is not"),
    ({"services": {"web": {"build": ".", "restart": 3}}}, "services.web.restart"),
    ({"servicez": {}}, "'servicez' does not match"),
    ({"services": {"web": {"image": "x"}}}, "no service with `build:` to deploy"),
    ({"services": {"web": {"build": ".", "extends": "nope"}}}, "services.web.extends: no service 'nope'"),
    ({"services": {"web": {"build": ".", "image": "${MISSING:?set MISSING}"}}},
     "required variable MISSING is missing: set MISSING"),
])
def test_a_bad_compose_file_is_one_ps_line_exit_2(tmp_path: Path, ps: Any, edit: dict[str, Any],
                                                  expected: str) -> None:
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(edit))
    done = ps("init", "--from-compose", str(tmp_path / "docker-compose.yml"), "--output",
              str(tmp_path / "o.yaml"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ps: ") and expected in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.yaml").exists()


def test_interpolation_as_compose_does() -> None:
    env = {"A": "1", "E": ""}
    warnings: list[str] = []
    cases = {"$A": "1", "${A}": "1", "$${A}": "${A}", "${E:-d}": "d", "${E-d}": "", "${N-d}": "d",
             "${A:+alt}": "alt", "${E:+alt}": "", "${E+alt}": "alt", "x${N}y": "xy", "${N:-${A}}": "1"}
    for text, expected in cases.items():
        assert interpolate(text, env, "t", warnings) == expected, text
    assert warnings == ["t: variable N is not set, taken as an empty string"]
    with pytest.raises(BadInput, match="required variable E is missing"):
        interpolate("${E:?}", env, "t", [])


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="compose file not found"):
        from_compose(str(tmp_path / "nope.yml"))


def test_dotenv_is_read_as_compose_reads_it(tmp_path: Path) -> None:
    """Quotes, `export`, comments, escapes in double quotes and a value with `=`; no interpolation
    inside .env itself (compose interpolates the compose file, with these values)."""
    (tmp_path / ".env").write_text(
        "# a comment\n"
        "export PLAIN=one\n"
        "SINGLE='two # not a comment'\n"
        'DOUBLE="line1\\nline2"\n'
        "WITH_EQ=a=b=c\n"
        "EMPTY=\n"
        "REF=${PLAIN}\n"
        "SPACED = padded  # trailing comment\n", encoding="utf-8")
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  web:\n    image: busybox\n    environment:\n"
        "      A: $PLAIN\n      B: $SINGLE\n      C: $DOUBLE\n      D: $WITH_EQ\n      E: x${EMPTY}x\n"
        "      F: $SPACED\n", encoding="utf-8")
    env = load_compose(tmp_path / "docker-compose.yml", environ={}).services["web"]["environment"]
    assert env == {"A": "one", "B": "two # not a comment", "C": "line1\nline2", "D": "a=b=c", "E": "xx",
                   "F": "padded"}
    from pipeline_steps.compose import _dotenv

    assert _dotenv(tmp_path / ".env")["REF"] == "${PLAIN}"
    assert _dotenv(tmp_path / "missing") == {}
