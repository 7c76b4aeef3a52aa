"""The JSON Schema for editors agrees with the example configs and with the config loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline_steps.config import parse_config
from pipeline_steps.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "pipeline_steps" / "schema" / "ps.schema.json"
EXAMPLES = sorted({*REPO.glob("examples/**/ps*.yaml"), *REPO.glob("shared/**/ps*.yaml"),
                   *REPO.glob("shared/**/ps*.yaml.example")})
VALID: dict[str, Any] = {
    "app": "shop", "registry": "127.0.0.1:5000",
    "services": {"web": {"slots": {"stable": 18081, "canary": 18082}}},
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_there_are_examples() -> None:
    assert REPO / "examples" / "ps.yaml" in EXAMPLES
    assert REPO / "shared" / "ps.yaml.example" in EXAMPLES


def test_the_committed_schema_is_the_one_the_models_generate() -> None:
    """ps.schema.json is generated (`ps config schema > pipeline_steps/schema/ps.schema.json`)."""
    from pipeline_steps.config.schema import schema_text

    assert SCHEMA_PATH.read_text() == schema_text()


def test_ps_config_schema_prints_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pipeline_steps", "config", "schema"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == SCHEMA_PATH.read_text()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_load(path: Path) -> None:
    from pipeline_steps.config import load_config

    config = load_config(path)
    assert config.services and config.source == str(path)


def test_schema_defaults_are_the_objects_defaults(validator: jsonschema.Draft202012Validator) -> None:
    """Defaults are written once (on the config objects): the loader and the schema both show them."""
    from pipeline_steps.config import (
        BlueGreenPolicy,
        CanaryPolicy,
        DeployPolicy,
        HealthSpec,
        MattermostNotify,
        NginxRouter,
    )

    config = parse_config({**VALID, "router": {"include": "/x/ups.conf"}})
    assert config.services["web"].health == HealthSpec()
    assert (config.canary, config.notify, config.deploy, config.blue_green) == (
        CanaryPolicy(), MattermostNotify(), DeployPolicy(), BlueGreenPolicy())
    assert config.router == NginxRouter(include="/x/ups.conf")
    defs = validator.schema["$defs"]
    assert defs["HealthFile"]["properties"]["retries"]["default"] == HealthSpec.retries
    assert defs["CanaryFile"]["properties"]["steps"]["default"] == [s.weight for s in CanaryPolicy.steps]
    assert defs["RouterFile"]["properties"]["keepalive"]["default"] == NginxRouter.keepalive
    assert validator.schema["properties"]["timezone"]["default"] == config.timezone


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_validate(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []


def mutate(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return raw


BROKEN = [
    ("services.web.health.path", "health"),
    ("services.web.health.timeout", "soon"),
    ("services.web.health.retries", 0),
    ("services.web.slots", {"stable": 1}),
    ("services.web.slots", {"stable": 1, "green": 2}),
    ("services.web.port", 70000),
    ("services.web.colour", "blue"),
    ("services.web.env_from", ["not a name"]),
    ("hosts", [{"docker": "http://10.0.0.1"}]),
    ("hosts", []),
    ("registry", "https://registry.example.com"),
    ("app", "Shop!"),
    ("canary.steps", [10, 140]),
    ("canary.tolerance", 0),
    ("notify.mattermost.url", "https://chat/hooks/x"),
    ("router.backups", 3),  # router without include
    ("surprise", 1),
    ("canary.scale", 2**63),
    ("router", {"include": "u.conf", "keepalive": 10**100}),
    ("services.web.health.path", "/health\r\nX: 1"),
    ("services.web.upstream", "a{b}"),
    ("services.web.env", {"A": "x\x00y"}),
    ("services.web.url", "not a url"),
    ("router", {"include": "u.conf", "url": "ftp://x"}),
    ("registry", "reg istry"),
    ("app", "a" * 100),
    ("hosts", [{"address": "not an ip!"}]),
    ("services.web.health.timeout", "１０s"),
    ("services.Web", {"slots": {"stable": 3, "canary": 4}}),
]


@pytest.mark.parametrize(("path", "value"), BROKEN, ids=[f"{p}={v!r}" for p, v in BROKEN])
def test_broken_configs_fail_both_the_schema_and_the_loader(
        validator: jsonschema.Draft202012Validator, path: str, value: Any) -> None:
    raw = mutate(path, value)
    assert list(validator.iter_errors(raw)), "schema accepted a broken config"
    with pytest.raises(ConfigError):
        parse_config(raw)


GOOD = [
    ("services.web.health", {"path": "/ready", "timeout": "500ms", "interval": 2, "expect": {"status": "ok"},
                             "expect_status": 200, "max_latency": "1s", "start_period": "1m"}),
    ("services.web.slots", {"blue": 9001, "green": 9002}),
    ("services.web.env", {"MODE": "fast", "WORKERS": 4, "DEBUG": False}),
    ("hosts", [{"name": "a", "docker": "ssh://deploy@10.0.0.2", "address": "10.0.0.2"},
               {"name": "b", "docker": "tcp://10.0.0.3:2376"}]),
    ("canary", {"steps": [5, {"weight": 50, "pause": "10s", "checks": 2}], "pause": "1m", "scale": 100}),
    ("router", {"include": "/etc/nginx/conf.d/ps.conf", "nginx": {"binary": "/usr/sbin/nginx"}}),
    ("deploy", {"keep_images": 3, "blue_green_keep": "forever", "lock_wait": "30s"}),
    ("timezone", "UTC"),
]


@pytest.mark.parametrize(("path", "value"), GOOD, ids=[p for p, _ in GOOD])
def test_good_configs_pass_both(validator: jsonschema.Draft202012Validator, path: str, value: Any) -> None:
    raw = mutate(path, value)
    assert [e.message for e in validator.iter_errors(raw)] == []
    parse_config(raw)


def test_schema_knows_every_top_level_key_the_loader_knows(
        validator: jsonschema.Draft202012Validator) -> None:
    # an unknown key is reported by the loader with its list of known keys: compare with the schema's
    with pytest.raises(ConfigError) as info:
        parse_config({**VALID, "zzz": 1})
    known = info.value.problems[0].split("(known: ")[1].rstrip(")").split(", ")
    assert set(known) == set(validator.schema["properties"])


def test_the_readme_config_reference_is_valid_for_loader_and_schema(
        validator: jsonschema.Draft202012Validator) -> None:
    """The README's ps.yaml reference uses every key: both the loader and the schema must accept it."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration: `ps.yaml`", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    config = parse_config(data, "README.md", REPO)
    assert config.canary.probe == 0 and config.services["web"].url
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
