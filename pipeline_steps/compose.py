"""Reading a docker-compose.yml the way compose does: YAML anchors and merge keys (PyYAML), `${VAR}`
interpolation (with the project's .env), `extends`, then validation against the Compose Specification's
own JSON Schema (pipeline_steps/schema/compose-spec.json). What comes out is the validated file with the
short forms of the keys ps carries over made long (environment, ports, volumes, networks, depends_on).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.errors import BadInput

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)
MAX_EXTENDS = 32


@dataclass
class ComposeProject:
    """A compose file, interpolated, extended and validated."""

    name: str
    base_dir: Path
    services: dict[str, dict[str, Any]]
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def network_name(self, key: str) -> str:
        """The engine's name of a network of the file (compose prefixes the project's name)."""
        spec = self.networks.get(key) or {}
        if spec.get("name"):
            return str(spec["name"])
        return key if spec.get("external") else f"{self.name}_{key}"

    def volume_name(self, key: str) -> str:
        spec = self.volumes.get(key) or {}
        if spec.get("name"):
            return str(spec["name"])
        return key if spec.get("external") else f"{self.name}_{key}"

    def container_name(self, service: str) -> str:
        """The name compose gives the service's (first) container."""
        spec = self.services.get(service) or {}
        return str(spec.get("container_name") or f"{self.name}-{service}-1")


def _dotenv(path: Path) -> dict[str, str]:
    """The variables of a compose project's `.env` (none when there is no such file), read by
    python-dotenv without interpolation: compose interpolates the file's values itself."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(path, interpolate=False, encoding="utf-8").items()}


def interpolate(value: Any, env: dict[str, str], where: str, warnings: list[str]) -> Any:
    """`${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR:+alt}`, `$$` in
    every string of `value` (keys too), as compose does."""
    if isinstance(value, dict):
        return {interpolate(k, env, where, warnings): interpolate(v, env, f"{where}.{k}", warnings)
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]", warnings) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] != "$" or i + 1 == len(value):
            out.append(value[i])
            i += 1
        elif value[i + 1] == "$":
            out.append("$")
            i += 2
        elif value[i + 1] == "{":
            depth, j = 1, i + 2
            while j < len(value) and depth:
                depth += {"{": 1, "}": -1}.get(value[j], 0)
                j += 1
            if depth:
                raise BadInput(f"{where}: unclosed ${{ in {value[:60]!r}")
            out.append(_expand(value[i + 2:j - 1], env, where, warnings))
            i = j
        else:
            m = _NAME.match(value, i + 1)
            if m is None:
                out.append("$")
                i += 1
            else:
                out.append(_expand(m.group(0), env, where, warnings))
                i = m.end()
    return "".join(out)


def _expand(inner: str, env: dict[str, str], where: str, warnings: list[str]) -> str:
    """One `${...}` (without the braces): NAME, NAME:-default, NAME-default, NAME:?err, NAME:+alt."""
    parts = _BRACED.match(inner)
    if parts is None:
        raise BadInput(f"{where}: invalid interpolation ${{{inner[:60]}}}")
    name, op, arg = parts.group("name"), parts.group("op"), parts.group("arg") or ""
    set_, empty = name in env, not env.get(name)
    if op in (":-", "-"):
        if set_ and not (op == ":-" and empty):
            return env[name]
        return str(interpolate(arg, env, where, warnings))
    if op in (":?", "?"):
        if not set_ or (op == ":?" and empty):
            raise BadInput(f"{where}: required variable {name} is missing: {arg or 'no value'}")
        return env[name]
    if op in (":+", "+"):
        return str(interpolate(arg, env, where, warnings)) if set_ and not (op == ":+" and empty) else ""
    if not set_:
        warnings.append(f"{where}: variable {name} is not set, taken as an empty string")
    return env.get(name, "")


def _merge(base: Any, over: Any) -> Any:
    """`extends`: mappings merged key by key (the extending service wins), sequences joined."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(over, list):
        return base + [v for v in over if v not in base]
    return over


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"compose file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None


def _extended(name: str, services: dict[str, Any], base_dir: Path, env: dict[str, str],
              warnings: list[str], depth: int = 0) -> dict[str, Any]:
    spec = services[name]
    ext = spec.get("extends") if isinstance(spec, dict) else None
    if ext is None:
        return spec
    if depth > MAX_EXTENDS:
        raise BadInput(f"services.{name}.extends: more than {MAX_EXTENDS} levels (a cycle?)")
    if isinstance(ext, str):
        ext = {"service": ext}
    target = str(ext.get("service", ""))
    pool, pool_dir = services, base_dir
    if ext.get("file"):
        other = (base_dir / str(ext["file"])).resolve()
        data = interpolate(_load_yaml(other), env, str(other), warnings) or {}
        pool, pool_dir = dict(data.get("services") or {}), other.parent
    if target not in pool:
        raise BadInput(f"services.{name}.extends: no service {target!r}"
                       + (f" in {ext['file']}" if ext.get("file") else ""))
    base = _extended(target, pool, pool_dir, env, warnings, depth + 1)
    own = {k: v for k, v in spec.items() if k != "extends"}
    return _merge({k: v for k, v in base.items() if k not in ("depends_on", "extends")}, own)


def load_compose(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> ComposeProject:
    """The compose file at `path`, as compose itself would read it; BadInput (exit 2) when it is not one."""
    import jsonschema

    file = Path(path).resolve()
    env = {**_dotenv(file.parent / ".env"), **(dict(os.environ) if environ is None else environ)}
    warnings: list[str] = []
    raw = _load_yaml(file)
    if not isinstance(raw, dict):
        raise BadInput(f"{file}: not a compose file (no mapping at the top)")
    data = interpolate(raw, env, "", warnings)
    services = dict(data.get("services") or {})
    data["services"] = {n: _extended(n, services, file.parent, env, warnings) for n in services}
    schema = _schema()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "(top)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadInput(f"{file}: {where}: {first.message[:200]}{more}")
    name = str(data.get("name") or re.sub(r"[^a-z0-9_-]", "", file.parent.name.lower()) or "default")
    return ComposeProject(name=name, base_dir=file.parent, services=data["services"],
                          networks={k: v or {} for k, v in (data.get("networks") or {}).items()},
                          volumes={k: v or {} for k, v in (data.get("volumes") or {}).items()},
                          warnings=warnings)


def _schema() -> dict[str, Any]:
    import json

    return json.loads((Path(__file__).parent / "schema" / "compose-spec.json").read_text())


# ---------------------------------------------------------------- short forms made long


def environment(spec: dict[str, Any]) -> dict[str, str | None]:
    """`environment:` as a mapping (a list item without `=` takes its value from the shell: None)."""
    env = spec.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in env]
        return {k: v for k, v in pairs}
    return {str(k): (None if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in env.items()}


def ports(spec: dict[str, Any]) -> list[tuple[int | None, int]]:
    """(published host port or None, container port) per `ports:` entry (ranges: their first port)."""
    found: list[tuple[int | None, int]] = []
    for item in spec.get("ports") or []:
        if isinstance(item, dict):
            published = item.get("published")
            found.append((int(str(published).split("-")[0]) if published else None, int(item["target"])))
            continue
        text = str(item).split("/")[0]
        parts = text.rsplit(":", 2)
        target = int(parts[-1].split("-")[0])
        published_text = parts[-2] if len(parts) >= 2 else ""
        found.append((int(published_text.split("-")[0]) if published_text else None, target))
    return found


def volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each `volumes:` entry as {type, source, target, read_only}."""
    found = []
    for item in spec.get("volumes") or []:
        if isinstance(item, dict):
            found.append({"type": item.get("type", "volume"), "source": item.get("source"),
                          "target": item["target"], "read_only": bool(item.get("read_only"))})
            continue
        parts = str(item).split(":")
        if len(parts) == 1:
            found.append({"type": "volume", "source": None, "target": parts[0], "read_only": False})
            continue
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else "rw"
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        found.append({"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")})
    return found


def networks(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Network key -> aliases (`networks:` list or mapping)."""
    nets = spec.get("networks")
    if nets is None:
        return {}
    if isinstance(nets, list):
        return {str(n): [] for n in nets}
    return {str(k): list((v or {}).get("aliases") or []) for k, v in nets.items()}


def depends_on(spec: dict[str, Any]) -> list[str]:
    deps = spec.get("depends_on") or []
    return [str(d) for d in (deps if isinstance(deps, list) else deps.keys())]
