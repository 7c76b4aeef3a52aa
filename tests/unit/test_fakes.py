"""The in-memory fakes keep the contracts of the adapters they stand in for (Router, Prober), and the
one-of-each helpers (atomic write, poll, timestamps, secret names) do what they say."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pipeline_steps.adapters import nginx
from pipeline_steps.adapters.fake_prober import FakeProber, not_ready, refused, up
from pipeline_steps.adapters.interfaces import Prober, Router
from pipeline_steps.adapters.nginx import NginxControl, NginxFailed, router_for, use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.adapters.prober import LiveProber
from pipeline_steps.config import HealthSpec, NginxRouter
from pipeline_steps.errors import Unreachable
from pipeline_steps.files import atomic_write
from pipeline_steps.health import GatePolicy, HealthTarget
from pipeline_steps.operations.health_gate import check_once, gate
from pipeline_steps.secrets import is_secret_env_name, is_secret_name
from pipeline_steps.timestamps import parse_log_timestamp, parse_state_time
from pipeline_steps.waiting import poll_until

# ---------------------------------------------------------------- Router: FakeRouter


def test_both_routers_satisfy_the_interface(tmp_path: Path) -> None:
    assert isinstance(FakeRouter(), Router)
    assert isinstance(NginxControl(NginxRouter(include=str(tmp_path / "u.conf"))), Router)


def test_fake_router_applies_and_keeps_the_text() -> None:
    router = FakeRouter(text="a")
    done = router.apply("b")
    assert done.changed and done.reloaded and not done.created and done.backup
    assert router.read_text() == "b" and router.reloads == 1 and router.backups == ["a"]
    assert router.verify("b") is None and router.verify("a") is not None
    again = router.apply("b")
    assert not again.changed and not again.reloaded and router.reloads == 1


def test_fake_router_dry_run_writes_nothing() -> None:
    router = FakeRouter(text=None)
    done = router.apply("b", dry_run=True)
    assert done.changed and done.created and not done.reloaded and router.read_text() is None


@pytest.mark.parametrize("failure", ["fail_test", "fail_reload"])
def test_fake_router_restores_on_a_failure(failure: str) -> None:
    router = FakeRouter(text="old")
    setattr(router, failure, "bind() to 127.0.0.1:1 failed")
    with pytest.raises(NginxFailed, match="previous file restored"):
        router.apply("new")
    assert router.read_text() == "old" and router.reloads == 0 and router.applied == []


def test_fake_router_stopped_changes_nothing() -> None:
    router = FakeRouter(text="old", is_running=False)
    with pytest.raises(Unreachable, match="not running"):
        router.apply("new")
    assert router.read_text() == "old" and not router.running()
    installed = router.install("new", force=True)  # no nginx: written, not reloaded
    assert installed.written and not installed.running and router.read_text() == "new"


def test_fake_router_fail_verify() -> None:
    router = FakeRouter(text="a", fail_verify="workers not replaced")
    assert router.verify("a") == "workers not replaced"


def test_router_for_is_the_one_factory(tmp_path: Path) -> None:
    config = NginxRouter(include=str(tmp_path / "u.conf"))
    assert isinstance(router_for(config), NginxControl)
    fake = FakeRouter()
    use_router(fake)
    try:
        assert router_for(config) is fake
    finally:
        use_router(None)
    assert nginx._override is None


def test_set_weights_goes_through_the_router(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config
    from pipeline_steps.operations.set_weights import set_weights
    from pipeline_steps.operations.switch import switch
    from pipeline_steps.operations.traffic import traffic_status

    config = parse_config({
        "app": "shop", "registry": "127.0.0.1:5000",
        "hosts": [{"name": "local", "address": "127.0.0.1"}],
        "router": {"include": str(tmp_path / "missing" / "u.conf")},
        "services": {"backend": {"context": ".", "slots": {"stable": 18001, "canary": 18002}},
                     "web": {"context": ".", "slots": {"blue": 18011, "green": 18012}}},
    }, base_dir=tmp_path)
    fake = FakeRouter(path=Path(config.router.include) if config.router else Path("u.conf"))
    use_router(fake)
    try:
        change = set_weights(config, 25)
        assert change.reloaded and change.created and "weight=" in (fake.text or "")
        assert set_weights(config, 25).changed is False  # read back through the router
        assert switch(config, "green").reloaded and fake.reloads == 2
        fake.fail_test = "bad"
        with pytest.raises(NginxFailed):
            set_weights(config, 50)
        status = traffic_status(config)
        assert status.exists
        split = {s.service: s.split for s in status.services}
        assert split["backend"] == {"stable": 75.0, "canary": 25.0}
    finally:
        use_router(None)


# ---------------------------------------------------------------- Prober: FakeProber


def test_both_probers_satisfy_the_interface() -> None:
    assert isinstance(FakeProber(), Prober)
    real = LiveProber()
    assert isinstance(real, Prober)
    real.close()


def test_fake_prober_scripts_answers_per_target() -> None:
    a, b = HealthTarget.url("http://127.0.0.1:1/a"), HealthTarget.tcp("127.0.0.1:2")
    prober = FakeProber({a.label: [refused(a.label), up(a.label)], b.label: up(b.label, "open")})
    policy = GatePolicy()
    assert not prober.probe(a, policy).ok
    assert prober.probe(a, policy).ok and prober.probe(a, policy).ok  # the last answer repeats
    assert prober.probe(b, policy).status == "open"
    assert not prober.probe(HealthTarget.tcp("127.0.0.1:3"), policy).ok  # unscripted: refused
    assert prober.calls[:2] == [a.label, a.label]


def test_gate_takes_a_prober_and_leaves_it_open() -> None:
    target = HealthTarget.url("http://127.0.0.1:1/health")
    prober = FakeProber({target.label: lambda n: up(target.label) if n >= 2 else not_ready(target.label)})
    result = gate([target], GatePolicy(retries=5, interval=0.01, fast_retry=0.0), prober=prober)
    assert result.healthy and result.attempts == 3 and not prober.closed
    record = check_once([target], GatePolicy(), prober=FakeProber({target.label: up(target.label)}))
    assert record.ok


def test_gate_policy_is_derived_from_the_health_spec() -> None:
    spec = HealthSpec()
    policy = GatePolicy()
    assert isinstance(policy, HealthSpec)
    for name in ("retries", "interval", "timeout", "expect_status", "max_latency", "successes",
                 "start_period", "logs_fallback"):
        assert getattr(policy, name) == getattr(spec, name)
    assert GatePolicy.from_spec(HealthSpec(retries=7, expect={"a": "1"})).expect == (("a", "1"),)


# ---------------------------------------------------------------- one of each


def test_atomic_write_mode_content_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "f.env"
    atomic_write(path, "A=1\n", mode=0o600)
    assert path.read_text() == "A=1\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, b"B=2\n")
    assert path.read_bytes() == b"B=2\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["f.env"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    atomic_write(path, "old")

    def broken(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_poll_until_returns_the_value_or_none_at_the_deadline() -> None:
    started = time.monotonic()
    calls: list[int] = []

    def check() -> str | None:
        calls.append(1)
        return "ready" if len(calls) >= 3 else None

    assert poll_until(check, timeout=5, interval=0.001) == "ready" and len(calls) == 3
    assert poll_until(lambda: None, timeout=0.05, interval=0.01) is None
    assert time.monotonic() - started < 5

    def boom() -> None:
        raise ValueError("stop")

    with pytest.raises(ValueError):
        poll_until(boom, timeout=5, interval=0.01)


def test_one_timestamp_parser() -> None:
    assert parse_log_timestamp("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_state_time("0001-01-01T00:00:00Z") is None and parse_state_time(None) is None
    assert parse_state_time("1970-01-01T00:00:02Z") == 2_000_000_000
    assert parse_log_timestamp("2024-05-01 10:00:00") is None


def test_one_secret_name_rule(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config

    assert is_secret_name("DB_PASSWORD") and is_secret_name("api_key_2") and not is_secret_name("PORT")
    assert is_secret_env_name("GITLAB_TOKEN") and not is_secret_env_name("KEYBOARD_LAYOUT")
    config = parse_config({
        "app": "shop", "registry": "127.0.0.1:5000", "hosts": [{"name": "local", "address": "127.0.0.1"}],
        "services": {"backend": {"context": ".", "slots": {"stable": 18001, "canary": 18002},
                                 "env": {"API_KEY": "k-12345", "PORT": "8080"}}},
    }, base_dir=tmp_path)
    env = config.masked()["services"]["backend"]["env"]  # `ps config show` uses the same rule
    assert env == {"API_KEY": "****", "PORT": "8080"}


def test_one_network_error_wording() -> None:
    from pipeline_steps.errors import EXIT_UNREACHABLE, unreachable

    err = unreachable("Jenkins at http://127.0.0.1:1", ConnectionError("http://u:secret@127.0.0.1:1"))
    assert err.message == "Jenkins at http://127.0.0.1:1 is unreachable: ConnectionError"
    assert err.exit_code == EXIT_UNREACHABLE and "secret" not in err.message
    assert unreachable("registry r", "connection refused", context="after 3 attempts").message == \
        "registry r is unreachable after 3 attempts: connection refused"
