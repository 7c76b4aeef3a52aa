"""Run settings in ps.yaml (networks, volumes, command, limits, ...): parsing, refusals with their path,
the SDK options they become, and the comparison that makes any change (or removal) a change."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.adapters import slots
from pipeline_steps.adapters.run_options import create_options, networks
from pipeline_steps.config import parse_config
from pipeline_steps.config.run_spec import RunSpec
from pipeline_steps.errors import EXIT_USAGE, ConfigError
from pipeline_steps.operations.slot_spec import changed_settings, wanted_settings

BASE: dict[str, Any] = {"app": "shop", "registry": "127.0.0.1:5000",
                        "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}}}}
FULL: dict[str, Any] = {
    "networks": ["backend", {"name": "data", "aliases": ["web", "api"], "create": True}],
    "volumes": ["uploads:/app/uploads", "/srv/conf:/etc/app:ro", "./static:/static",
                {"source": "cache", "target": "/cache", "read_only": False}],
    "command": "gunicorn -b 0.0.0.0:80 'app:create()'", "entrypoint": ["/bin/sh", "-c"],
    "user": "1000:1000", "workdir": "/app", "memory": "512m", "cpus": 1.5, "pids": 200,
    "extra_hosts": {"db.local": "10.0.0.5"}, "ulimits": {"nofile": 65536, "nproc": {"soft": 10, "hard": 20}},
    "stop_signal": "SIGTERM", "stop_timeout": "30s",
    "log": {"driver": "local", "options": {"max-size": "5m"}},
    "labels": {"team": "shop"}, "restart": "always",
    "healthcheck": {"test": ["CMD", "wget", "-q", "http://127.0.0.1/health"], "interval": "5s", "retries": 3,
                    "start_period": "10s"},
}


def config_with(tmp: Path, **run: Any) -> Any:
    raw = copy.deepcopy(BASE)
    raw["services"]["web"].update(run)
    return parse_config(raw, base_dir=tmp)


def problems(**run: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_with(Path("/srv/project"), **run)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.problems


def test_every_form_parses_into_the_run_spec(tmp_path: Path) -> None:
    run = config_with(tmp_path, **FULL).service("web").run
    assert [(n.name, n.aliases, n.create) for n in run.networks] == [("backend", (), False),
                                                                     ("data", ("web", "api"), True)]
    assert [v.bind() for v in run.volumes] == ["uploads:/app/uploads:rw", "/srv/conf:/etc/app:ro",
                                               f"{tmp_path}/static:/static:rw", "cache:/cache:rw"]
    assert run.command == ("gunicorn", "-b", "0.0.0.0:80", "app:create()")
    assert run.memory == 512 * 1024 ** 2 and run.cpus == 1.5 and run.stop_timeout == 30
    assert [(u.name, u.soft, u.hard) for u in run.ulimits] == [("nofile", 65536, 65536), ("nproc", 10, 20)]


def test_the_sdk_options(tmp_path: Path) -> None:
    run = config_with(tmp_path, **FULL).service("web").run
    opts = create_options(run)
    assert opts["mem_limit"] == 512 * 1024 ** 2 and opts["nano_cpus"] == 1_500_000_000
    assert opts["pids_limit"] == 200 and opts["working_dir"] == "/app" and opts["user"] == "1000:1000"
    assert opts["extra_hosts"] == {"db.local": "10.0.0.5"}
    assert opts["ulimits"][1] == {"Name": "nproc", "Soft": 10, "Hard": 20}
    assert opts["healthcheck"] == {"test": ["CMD", "wget", "-q", "http://127.0.0.1/health"],
                                   "interval": 5_000_000_000, "start_period": 10_000_000_000, "retries": 3}
    assert networks(run) == [("backend", ()), ("data", ("web", "api"))]
    assert create_options(RunSpec()) == {} and RunSpec().as_label() == ""


@pytest.mark.parametrize(("run", "expected"), [
    ({"networks": ["bad name"]}, "services.web.networks[0].name: use letters"),
    ({"volumes": ["nocolon"]}, "services.web.volumes[0]: not a volume"),
    ({"volumes": ["uploads:relative"]}, "services.web.volumes[0].target: must be an absolute path"),
    ({"memory": "1t"}, "services.web.memory: not a size"),
    ({"memory": "1k"}, "services.web.memory: must be from 6m to 1024g"),
    ({"cpus": "nan"}, "services.web.cpus: must be from 0.01 to 1024"),
    ({"cpus": "１"}, "services.web.cpus"),
    ({"pids": 2 ** 63}, "services.web.pids"),
    ({"command": []}, "services.web.command"),
    ({"command": "unbalanced 'quote"}, "services.web.command: cannot be split"),
    ({"ulimits": {"nofile": -1}}, "services.web.ulimits.nofile"),
    ({"restart": "sometimes"}, "services.web.restart"),
    ({"extra_hosts": {"db": "not an ip!"}}, "services.web.extra_hosts.db"),
    ({"healthcheck": {"interval": "5s"}}, "services.web.healthcheck.test"),
    ({"labels": {"team": "a\nb"}}, "services.web.labels.team"),
    ({"memroy": "1g"}, "services.web.memroy"),
])
def test_bad_run_settings_are_named_with_their_path(run: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(**run)), problems(**run)


def _settings(tmp: Path, **run: Any) -> Any:
    config = config_with(tmp, **run)
    return wanted_settings(config, config.service("web"), config.hosts[0], "canary", "b1",
                           SimpleNamespace(id="sha256:img"), "sha256:dig", {"A": "1"})


def _attrs(wanted: Any) -> dict[str, Any]:
    return {"Image": wanted.image_id,
            "Config": {"Env": [f"{k}={v}" for k, v in wanted.env.items()], "Labels": dict(wanted.labels)},
            "HostConfig": {"PortBindings": {k: [{"HostIp": ip, "HostPort": str(port)}]
                                            for k, (ip, port) in wanted.ports.items()},
                           "RestartPolicy": {"Name": wanted.restart_policy}, "LogConfig": wanted.log_config},
            "NetworkSettings": {"Networks": {n.name: {} for n in wanted.run.networks}}}


def test_a_change_or_a_removal_of_any_setting_is_named(tmp_path: Path) -> None:
    full = _settings(tmp_path, **FULL)
    assert changed_settings(full, _attrs(full)) == []
    smaller = {k: v for k, v in FULL.items() if k not in ("pids", "ulimits")}
    reasons = changed_settings(_settings(tmp_path, **smaller), _attrs(full))
    assert reasons[0] == "new run settings (pids, ulimits)"
    more = _settings(tmp_path, **{**FULL, "memory": "1g"})
    assert "new run settings (memory)" in changed_settings(more, _attrs(full))
    drifted = _attrs(full)
    del drifted["NetworkSettings"]["Networks"]["data"]
    assert "new run settings (networks)" in changed_settings(full, drifted)


def test_a_slot_made_before_run_settings_existed_is_unchanged(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    old = _attrs(plain)
    del old["Config"]["Labels"][slots.LABEL_RUN]
    assert changed_settings(plain, old) == []


@settings(max_examples=60, deadline=None)
@given(memory=st.integers(6, 4096), cpus=st.floats(0.01, 64), pids=st.integers(1, 10_000))
def test_limits_round_trip(memory: int, cpus: float, pids: int) -> None:
    run = config_with(Path("/srv/project"), memory=f"{memory}m", cpus=cpus, pids=pids).service("web").run
    opts = create_options(run)
    assert opts["mem_limit"] == memory * 1024 ** 2 and opts["pids_limit"] == pids
    assert abs(opts["nano_cpus"] - cpus * 1e9) <= 1
    assert RunSpec.names_in_label(run.as_label())["memory"] == memory * 1024 ** 2


@pytest.mark.parametrize(("stop_timeout", "slot", "worker"), [(None, 0, 10), (30.0, 30, 30), (0.4, 0, 0),
                                                              (2.6, 3, 3)])
def test_the_stop_grace_is_stop_timeout_else_none_for_a_slot_and_ten_seconds_for_a_worker(
        stop_timeout: float | None, slot: int, worker: int) -> None:
    run = RunSpec(stop_timeout=stop_timeout)
    assert run.stop_seconds(worker=False) == slot  # a slot's previous container takes no traffic
    assert run.stop_seconds(worker=True) == worker  # a replica may be finishing a job: Docker's 10 s
