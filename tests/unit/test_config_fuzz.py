"""Fuzzing ps.yaml (issue 16): generated valid configs pass the loader and the generated JSON Schema alike;
mutated values, mutated YAML text and the real CLI give only ConfigError / exit 2, fast, never a traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_steps.config import Config, load_config, parse_config
from pipeline_steps.errors import EXIT_USAGE, ConfigError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "pipeline_steps" / "schema" / "ps.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DEADLINE = timedelta(seconds=3)  # one parse takes about a millisecond; a loop or a blow-up takes far more
FAST = settings(deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- valid configs

LOWER, UPPER, DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ_", "0123456789"
names = st.text(LOWER + DIGITS, min_size=1, max_size=12)
env_names = st.builds(
    str.__add__, st.text(UPPER, min_size=1, max_size=1), st.text(UPPER + DIGITS, max_size=10)
)
safe_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
durations = st.one_of(
    st.integers(0, 3600), st.sampled_from(["500ms", "2s", "1m", "1h", "0.5", "1.5s", "30S"])
)
positive = st.one_of(st.integers(1, 3600), st.sampled_from(["500ms", "2s", "1m", "0.25s"]))
registries = st.sampled_from(
    ["r", "127.0.0.1:5000", "registry.example.com:5000/team", "reg.io/a/b-c", "[::1]:5000"]
)
ips = st.builds(lambda a, b: f"10.{a}.{b}.1", st.integers(0, 255), st.integers(0, 255))
urls = st.builds(
    lambda h, p, path: f"http://{h}:{p}/{path}",
    st.sampled_from(["127.0.0.1", "shop.example.com"]),
    st.integers(1, 65535),
    st.text(LOWER + DIGITS + "/", max_size=10),
)


@st.composite
def healths(draw: st.DrawFn) -> dict[str, Any]:
    retries = draw(st.integers(1, 10000))
    optional = {
        "path": st.builds("/".__add__, st.text(LOWER + DIGITS + "/._-", max_size=20)),
        "expect_status": st.integers(100, 599),
        "expect": st.dictionaries(
            st.text(LOWER + ".", min_size=1, max_size=8),
            st.one_of(safe_text, st.integers(), st.booleans()),
            max_size=3,
        ),
        "timeout": positive,
        "interval": durations,
        "max_latency": durations,
        "start_period": durations,
        "successes": st.integers(1, min(retries, 1000)),
        "logs_fallback": st.sampled_from(["ready", "Started .* in"]),
    }
    return {"retries": retries, **draw(st.fixed_dictionaries({}, optional=optional))}


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    service_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    ports = iter(draw(st.lists(st.integers(1, 65535), min_size=8, max_size=8, unique=True)))
    services = {}
    for name in service_names:
        pair = draw(st.sampled_from([("stable", "canary"), ("blue", "green")]))
        services[name] = {
            "slots": {pair[0]: next(ports), pair[1]: next(ports)},
            **draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "context": st.sampled_from([".", "app", "./web"]),
                        "dockerfile": st.just("Dockerfile"),
                        "port": st.integers(1, 65535),
                        "health": healths(),
                        "url": urls,
                        "env": st.dictionaries(
                            env_names, st.one_of(safe_text, st.integers(-9, 9), st.booleans()), max_size=3
                        ),
                        "env_from": st.lists(env_names, max_size=3),
                    },
                )
            ),
        }
    scale = draw(st.integers(2, 100000))
    weights = sorted(draw(st.sets(st.integers(0, 100), min_size=1, max_size=5)))
    steps = [
        w
        if draw(st.booleans())
        else {"weight": w, "pause": draw(durations), "checks": draw(st.integers(1, 99))}
        for w in weights
    ]
    hosts = [
        {"name": f"h{i}", "address": a} for i, a in enumerate(draw(st.lists(ips, min_size=1, max_size=3)))
    ]
    optional = {
        "timezone": st.sampled_from(["UTC", "Asia/Seoul", "Europe/Berlin"]),
        "hosts": st.just(hosts),
        "router": st.fixed_dictionaries(
            {"include": st.sampled_from(["ups.conf", "nginx/ps.conf"])},
            optional={
                "url": urls,
                "backups": st.integers(1, 1000),
                "keepalive": st.integers(0, 10000),
                "container": names,
                "nginx": st.just({"binary": "nginx", "conf": "nginx.conf"}),
            },
        ),
        "canary": st.fixed_dictionaries(
            {
                "steps": st.just(steps),
                "scale": st.just(scale),
                "min_weight": st.integers(0, (scale - 1) // 2),
            },
            optional={
                "tolerance": st.integers(1, 100000),
                "probe": st.integers(0, 100000),
                "pause": durations,
                "check_interval": positive,
            },
        ),
        "deploy": st.fixed_dictionaries(
            {},
            optional={
                "keep_images": st.integers(1, 1000),
                "lock_wait": durations,
                "blue_green_keep": st.one_of(durations, st.just("forever")),
            },
        ),
        "blue_green": st.fixed_dictionaries({}, optional={"watch": durations}),
        "notify": st.just({"mattermost": {"webhook_env": "HOOK", "channel": "deploys"}}),
        "state_dir": st.just(".state"),
    }
    return {
        "app": draw(names),
        "registry": draw(registries),
        "services": services,
        **draw(st.fixed_dictionaries({}, optional=optional)),
    }


@FAST
@given(valid_configs())
def test_valid_configs_pass_the_schema_and_the_loader_alike(raw: dict[str, Any]) -> None:
    assert [e.message for e in VALIDATOR.iter_errors(raw)] == []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ps.yaml"
        config = parse_config(raw, str(path), path.parent.resolve())
        path.write_text(yaml.safe_dump(raw))
        assert load_config(path) == config
    assert set(config.services) == set(raw["services"])


# ---------------------------------------------------------------- mutated values

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 10**100, -1, 0, 65536]),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\nb",
            "１０",
            "1e999",
            "ftp://x",
            "/tmp",
            "/etc/passwd",
            "{x}",
            "a;b",
            "500ms",
            "http://",
        ]
    ),
)
yamlish = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [loc]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*loc, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*loc, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    raw = copy.deepcopy(draw(valid_configs()))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(raw) if p]
        if not paths:
            break
        loc = draw(st.sampled_from(paths))
        parent = raw
        for part in loc[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[loc[-1]] = draw(yamlish)
        elif action == "delete":
            del parent[loc[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(yamlish)
    return raw


def _only_config_errors(raw: Any) -> None:
    try:
        config = parse_config(raw, base_dir=Path("/nonexistent/project"))
    except ConfigError as exc:
        assert exc.exit_code == EXIT_USAGE and exc.problems
        for problem in exc.problems:
            assert ": " in problem and "\n" not in problem and "\r" not in problem and len(problem) < 600, (
                problem
            )
    else:
        assert isinstance(config, Config)


@settings(FAST, max_examples=150)
@given(mutated())
def test_mutated_configs_raise_only_config_error(raw: Any) -> None:
    _only_config_errors(raw)


# ---------------------------------------------------------------- mutated YAML text

EXAMPLE = (REPO / "examples" / "ps.yaml").read_text()
pieces = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "!!",
        "!!python/object:x",
        ": ",
        "- ",
        "\n",
        "\t",
        "'",
        '"',
        "? ",
        "<<: ",
        "app: x\n",
        "\x00",
        "\ufeff",
        "１",
        "#",
        "  ",
        "%YAML 1.1\n",
        "---\n",
    ]
)


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from([EXAMPLE, yaml.safe_dump(draw(valid_configs()))]))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "duplicate-line"]))
        if kind == "insert":
            text = text[:at] + draw(st.one_of(pieces, st.text(max_size=4))) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        else:
            lines = text.splitlines(keepends=True) or [""]
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + lines[i:])
    data = text.encode("utf-8", "surrogatepass")
    return data + b"\xff" if draw(st.integers(0, 20)) == 0 else data


@settings(FAST, max_examples=100)
@given(mutated_text())
def test_mutated_yaml_text_raises_only_config_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ps.yaml"
        path.write_bytes(content)
        try:
            load_config(path)
        except ConfigError as exc:
            assert exc.exit_code == EXIT_USAGE and all("\n" not in p for p in exc.problems)


@pytest.mark.parametrize("depth", [100, 5000, 50000])
def test_deep_text_is_one_problem(depth: int, tmp_path: Path) -> None:
    path = tmp_path / "ps.yaml"
    for text in ("app: " + "[" * depth + "]" * depth, "app: " + "{a: " * depth + "1" + "}" * depth):
        path.write_text(text)
        with pytest.raises(ConfigError, match="nesting deeper than"):
            load_config(path)


# ---------------------------------------------------------------- the real CLI


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_text(), mutated().map(lambda raw: yaml.safe_dump(raw).encode())))
def test_the_cli_exits_0_or_2_with_ps_lines_only(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ps.yaml").write_bytes(content)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline_steps", "config", "validate"],
            cwd=d,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode in (0, 2), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 2:
        assert all(line.startswith("ps: ") for line in done.stderr.strip().splitlines()), done.stderr
