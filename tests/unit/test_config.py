"""ps.yaml: defaults, every problem with its path, robustness against arbitrary data."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_steps.config import Config, load_config, parse_config
from pipeline_steps.errors import EXIT_USAGE, BadInput, ConfigError

MINIMAL: dict[str, Any] = {
    "app": "shop",
    "registry": "127.0.0.1:5000",
    "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}}},
}


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=Path("/srv/project"))
    assert info.value.exit_code == EXIT_USAGE
    return info.value.problems


def with_(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(changes)
    return raw


def web(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw["services"]["web"].update(changes)
    return raw


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(MINIMAL, base_dir=Path("/srv/project"))
    assert config.timezone == "Asia/Seoul"
    assert [(h.name, h.docker, h.address) for h in config.hosts] == [("local", None, "127.0.0.1")]
    svc = config.services["web"]
    assert svc.context == "/srv/project/app"
    assert svc.dockerfile == "Dockerfile" and svc.port == 80
    assert svc.health.path == "/health" and svc.health.retries == 30 and svc.health.timeout == 5.0
    assert [s.weight for s in config.canary.steps] == [10, 40, 70]
    assert config.canary.pause == 30.0 and config.canary.tolerance == 2
    assert config.canary.scale == 1000 and config.canary.min_weight == 1
    assert config.notify.webhook_env == "MATTERMOST_WEBHOOK_URL"
    assert config.router is None
    assert config.image_ref(svc, "abc123def456") == "127.0.0.1:5000/shop/web:abc123def456"
    assert svc.pair("canary") == ("stable", "canary") and svc.pair("blue-green") is None


def test_full_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "ps.yaml"
    config = load_config(example)
    assert set(config.services) == {"web", "api"}
    assert config.services["api"].pair("blue-green") == ("blue", "green")
    assert config.services["api"].health.interval == 0.5
    assert config.services["web"].health.expect == {"status": "healthy", "database": "healthy"}
    assert config.services["web"].context == str(example.parent / "sample-app")


def test_durations_in_every_form() -> None:
    config = parse_config(web(health={"timeout": "500ms", "interval": 2, "start_period": "1m"}))
    health = config.services["web"].health
    assert (health.timeout, health.interval, health.start_period) == (0.5, 2.0, 60.0)


def test_health_path_problem_names_its_path() -> None:
    assert problems_of(web(health={"path": "health"})) == ['services.web.health.path: must start with "/"']


def test_every_problem_is_reported_with_its_path() -> None:
    raw = {
        "app": "Shop!",
        "registry": "https://registry.example.com",
        "timezone": "Mars/Olympus",
        "colour": "blue",
        "hosts": [{"name": "a", "docker": "http://x"}, {"name": "a"}],
        "services": {
            "web": {"slots": {"stable": 80}, "health": {"path": "x", "timeout": "soon", "retries": 0},
                    "env": {"1BAD": "x"}, "env_from": ["OK_NAME", "not ok"], "port": 70000},
            "api": {"slots": {"blue": 9000, "green": 9000}},
        },
        "canary": {"steps": [50, 40, 101], "min_weight": 600},
        "notify": {"mattermost": {"webhook_url": "https://chat/hooks/x"}},
    }
    problems = problems_of(raw)
    paths = {p.split(":")[0] for p in problems}
    assert {"app", "registry", "timezone", "colour", "hosts[0].docker", "hosts[1].name",
            "services.web.slots", "services.web.health.path", "services.web.health.timeout",
            "services.web.health.retries", "services.web.env.1BAD", "services.web.env_from[1]",
            "services.web.port", "services.api.slots", "canary.steps[2]", "canary.steps",
            "canary.min_weight", "notify.mattermost"} <= paths, problems
    assert any("unknown key" in p for p in problems if p.startswith("colour"))
    assert ConfigError(problems).message.endswith(f"(+{len(problems) - 1} more)")


def test_missing_required_keys() -> None:
    problems = problems_of({"timezone": "UTC"})
    assert "app: is required" in problems and "registry: is required" in problems
    assert any(p.startswith("services: is required") for p in problems)


@pytest.mark.parametrize("raw", [None, [], "text", 3])
def test_top_level_must_be_a_mapping(raw: Any) -> None:
    assert problems_of(raw) == ["top level: must be a mapping (app, registry, services, ...)"]


def test_slots_need_a_full_pair() -> None:
    assert any("needs a full pair" in p for p in problems_of(web(slots={"stable": 1, "green": 2})))
    assert any(p.startswith("services.web.slots: is required") for p in problems_of(web(slots=None)))


def test_ports_shared_between_services_are_refused() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["services"]["api"] = {"slots": {"blue": 18081, "green": 18099}}
    assert problems_of(raw) == ["services.api.slots.blue: port 18081 is also used by service web"]


def test_docker_endpoints() -> None:
    hosts = [{"name": "one", "docker": "unix:///var/run/docker.sock"},
             {"name": "two", "docker": "tcp://10.0.0.2:2376", "address": "10.0.0.2"},
             {"name": "three", "docker": "ssh://deploy@10.0.0.3", "address": "10.0.0.3"}]
    config = parse_config(with_(hosts=hosts))
    assert [h.docker for h in config.hosts] == [h["docker"] for h in hosts]
    assert problems_of(with_(hosts=[])) == ["hosts: must be a non-empty list"]


def test_canary_policy_forms() -> None:
    config = parse_config(with_(canary={"steps": [5, {"weight": 50, "pause": "10s", "checks": 3}],
                                        "pause": "1m", "tolerance": 4}))
    assert [s.weight for s in config.canary.steps] == [5, 50]
    assert config.canary.steps[1].pause == 10.0 and config.canary.steps[1].checks == 3
    assert config.canary.pause == 60.0 and config.canary.tolerance == 4
    assert problems_of(with_(canary={"steps": [{"pause": "1s"}]})) == ["canary.steps[0].weight: is required"]


def test_webhook_url_is_never_accepted_in_the_file() -> None:
    problems = problems_of(with_(notify={"mattermost": {"url": "https://chat/hooks/abc"}}))
    assert ("notify.mattermost: the webhook URL is a secret: give it through an environment variable"
            in problems)
    assert not any("hooks/abc" in p for p in problems)


def test_masked_hides_secret_looking_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERMOST_WEBHOOK_URL", "https://chat.example.com/hooks/very-secret")
    config = parse_config(web(env={"DB_PASSWORD": "hunter22", "API_TOKEN": "t0k3n", "MODE": "fast"}))
    data = config.masked()
    env = data["services"]["web"]["env"]
    assert env == {"DB_PASSWORD": "****", "API_TOKEN": "****", "MODE": "fast"}
    assert data["notify"]["webhook"] == "set (masked)"
    assert "very-secret" not in yaml.safe_dump(data)


def test_unknown_service_is_bad_input() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(BadInput, match="unknown service 'nope' \\(configured: web\\)"):
        config.select("nope")
    assert [s.name for s in config.select(None)] == ["web"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "ps.yaml")


def test_load_config_reports_yaml_position(tmp_path: Path) -> None:
    path = tmp_path / "ps.yaml"
    path.write_text("app: shop\nservices: [\n  web: {\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in info.value.message and "line " in info.value.message


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy" / "ps.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(with_(router={"include": "nginx/ps.conf"}, state_dir=".state")))
    config = load_config(path)
    assert config.services["web"].context == str(tmp_path / "deploy" / "app")
    assert config.router is not None and config.router.include == str(tmp_path / "deploy" / "nginx/ps.conf")
    assert config.state_dir == str(tmp_path / "deploy" / ".state")


@pytest.mark.parametrize(("change", "path"), [
    ({"services": {"web": {"context": "a\x00b", "slots": {"stable": 1, "canary": 2}}}},
     "services.web.context"),
    ({"state_dir": "x\x00"}, "state_dir"),
    ({"router": {"include": "x\x00"}}, "router.include"),
    ({"router": {"include": "x", "nginx": {"conf": "\x00"}}}, "router.nginx.conf"),
])
def test_unusable_paths_are_problems_not_crashes(change: dict[str, Any], path: str) -> None:
    assert [p.split(":")[0] for p in problems_of(with_(**change))] == [path]


# ---------------------------------------------------------------- robustness

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True), st.text(max_size=8))
yamlish = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner,
                                                 max_size=4)), max_leaves=20)
KEYS = ["app", "registry", "timezone", "hosts", "services", "router", "canary", "notify", "deploy",
        "state_dir"]


def _parse_never_crashes(raw: Any) -> None:
    try:
        config = parse_config(raw, base_dir=Path("/srv/project"))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yamlish)
def test_arbitrary_data_raises_only_config_error(raw: Any) -> None:
    _parse_never_crashes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional={k: yamlish for k in KEYS}))
def test_arbitrary_values_under_known_keys_raise_only_config_error(raw: dict[str, Any]) -> None:
    _parse_never_crashes(raw)


service_values = st.fixed_dictionaries({}, optional={
    k: yamlish for k in ["context", "dockerfile", "port", "slots", "env", "env_from", "health", "upstream"]})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service_values, st.fixed_dictionaries({}, optional={
    k: yamlish for k in ["path", "expect_status", "expect", "retries", "timeout", "interval",
                         "max_latency", "successes", "start_period", "logs_fallback"]}))
def test_arbitrary_service_and_health_raise_only_config_error(svc: dict[str, Any],
                                                              health: dict[str, Any]) -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["services"]["web"].update(svc)
    if health:
        raw["services"]["web"]["health"] = health
    _parse_never_crashes(raw)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_yaml_text_raises_only_config_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ps.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError:
            pass


def test_router_paths_host_nginx_and_nginx_in_a_container(tmp_path: Path) -> None:
    """Host nginx: every path is on this machine (relative to ps.yaml). nginx in a container: the include
    (and a bind-mounted error log) are written/read here, nginx's own paths are as the container sees them."""
    raw: dict[str, Any] = {"app": "shop", "registry": "r:5000",
                           "services": {"web": {"slots": {"stable": 18081, "canary": 18082}}}}
    host_router = {"include": "ups.conf", "nginx": {"conf": "nginx.conf", "prefix": "pfx"}}
    host = parse_config({**raw, "router": host_router}, base_dir=tmp_path)
    assert host.router is not None
    assert host.router.include == str(tmp_path / "ups.conf")
    assert host.router.conf == str(tmp_path / "nginx.conf") and host.router.prefix == str(tmp_path / "pfx")
    boxed_router = {"include": "edge/ups.conf", "container": "edge-nginx",
                    "nginx": {"conf": "/etc/nginx/nginx.conf", "error_log": "logs/e.log",
                              "pid": "/run/nginx.pid"}}
    boxed = parse_config({**raw, "router": boxed_router}, base_dir=tmp_path)
    assert boxed.router is not None
    assert boxed.router.include == str(tmp_path / "edge" / "ups.conf")
    assert boxed.router.error_log == str(tmp_path / "logs" / "e.log")
    assert (boxed.router.conf, boxed.router.pid) == ("/etc/nginx/nginx.conf", "/run/nginx.pid")


def test_config_objects_import_without_pydantic_or_yaml() -> None:
    """Step modules import the config objects at their top: that must not load pydantic (or yaml), so
    `ps --help` and `ps <step> --help` stay fast; the models load when a config is read."""
    import subprocess
    import sys

    code = ("import sys\nimport pipeline_steps.config\nfrom pipeline_steps.cli import main\n"
            "for name in ('config', 'deploy', 'health-gate'):\n"
            "    try:\n        main([name, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'pydantic_core', 'yaml'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
