"""Reading ps.yaml: YAML that refuses duplicate keys and deep nesting, validation through the models,
and every problem as `path: message`, in the order of the file, in one ConfigError (exit 2).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipeline_steps.config.building import build
from pipeline_steps.config.models import Loc, Problem, PsFile
from pipeline_steps.config.objects import DEFAULT_CONFIG, Config
from pipeline_steps.config.types import Say
from pipeline_steps.errors import ConfigError

MAX_DEPTH = 32  # ps.yaml needs 5 levels; YAML parsers recurse per level
MAX_VALUES = 100_000  # values after YAML aliases are expanded (a "billion laughs" file stops here)
MAX_BYTES = 1 << 20
_STAND_INS = {"app": "app", "registry": "registry.invalid"}  # let the rest of a file be checked as a whole
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")
TOP_LEVEL = "top level: must be a mapping (app, registry, services, ...)"


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping and nesting deeper than MAX_DEPTH."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=False)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {repr(key)[:80]} (first at line {first.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(file: Path) -> Any:
    """The data of one YAML file; ConfigError for anything that is not readable, UTF-8, valid YAML."""
    try:
        if file.stat().st_size > MAX_BYTES:
            raise ConfigError([f"top level: larger than {MAX_BYTES} bytes"], str(file))
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"top level: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start})"], str(file)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], str(file)) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}not valid YAML: {problem}"], str(file)) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise ConfigError([f"not valid YAML: {str(exc).split(':')[0][:200]}"], str(file)) from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate ps.yaml (default: $PS_CONFIG or ./ps.yaml)."""
    file = Path(path or os.environ.get("PS_CONFIG") or DEFAULT_CONFIG)
    if not file.is_file():
        raise ConfigError([f"config file not found: {file} (use --config FILE or PS_CONFIG)"], str(file))
    raw = read_yaml(file)
    if raw is None:
        raise ConfigError(["top level: the file is empty (expected a mapping: app, registry, services, ...)"],
                          str(file))
    return parse(raw, str(file), file.resolve().parent)


# ---------------------------------------------------------------- validation


def _shape(raw: Any) -> Problem | None:
    """The first place where the data nests too deep or is too large (aliases counted expanded)."""
    stack: list[tuple[Any, Loc]] = [(raw, ())]
    count = 0
    while stack:
        node, loc = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return (), f"more than {MAX_VALUES} values (YAML aliases expand to that)"
        if len(loc) > MAX_DEPTH:
            return loc[:1], f"nesting deeper than {MAX_DEPTH} levels"
        if isinstance(node, dict):
            stack.extend((v, (*loc, str(k))) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(node))
    return None


def _plain(raw: Any) -> Any:
    """A copy whose mapping keys are all text (YAML allows numbers, dates and bools as keys)."""
    if isinstance(raw, dict):
        return {str(k): _plain(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_plain(v) for v in raw]
    return raw


def _annotation_field(model: type[BaseModel], name: Any) -> FieldInfo | None:
    return model.model_fields.get(name) if isinstance(name, str) else None


def _inner(tp: Any, part: Any) -> Any:
    """The type one step (`part`) below `tp`: a model's field, a list's item, a dict's value."""
    while True:
        origin = get_origin(tp)
        if origin is None:
            break
        args = [a for a in get_args(tp) if a is not type(None)]
        if origin in (list, tuple):
            return args[0] if args else None
        if origin is dict:
            return args[1]
        tp = args[0]  # Annotated, Optional, Union: the first real type
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = _annotation_field(tp, part)
        return field.annotation if field else None
    return None


def _strip(tp: Any) -> Any:
    while get_origin(tp) is not None and get_origin(tp) not in (list, tuple, dict):
        tp = next(a for a in get_args(tp) if a is not type(None))
    return tp


def _where(loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last part of `loc`, and that field (None where loc is not a field)."""
    tp: Any = PsFile
    for part in loc[:-1]:
        tp = _inner(tp, part) if tp is not None else None
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, _annotation_field(tp, loc[-1]) if loc else None
    return None, None


def _message(error: dict[str, Any], loc: Loc) -> str:
    """ps's wording for one pydantic error at `loc`."""
    kind, ctx = error["type"], error.get("ctx") or {}
    model, field = _where(loc) if loc else (None, None)
    for meta in field.metadata if field else ():
        if isinstance(meta, Say) and kind in meta.types:
            return meta.message
    if kind == "ps":
        return str(error["msg"])
    if kind == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields)) if model else ""
        return f"unknown key (known: {known})" if known else "unknown key"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    words = {
        "missing": "is required",
        "int_type": "must be a whole number", "int_from_float": "must be a whole number",
        "int_parsing": "must be a whole number",
        "greater_than_equal": f"must be >= {ctx.get('ge')}", "less_than_equal": f"must be <= {ctx.get('le')}",
        "string_type": "must be a string", "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "dict_type": "must be a mapping", "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "list_type": "must be a list", "too_short": "must not be empty",
    }
    if kind == "too_long":
        unit = "entries" if ctx.get("field_type") in ("List", "Dictionary", "Tuple", "Set") else "characters"
        return f"must be at most {ctx.get('max_length')} {unit}"
    return words.get(kind, str(error["msg"]).lower())


def _error_loc(error: dict[str, Any]) -> Loc:
    return tuple(p for p in error["loc"] if p != "[key]")


def _node(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _prune(data: Any, errors: list[dict[str, Any]], moved: dict[Loc, list[int]]) -> bool:
    """Drop what the errors point at (a missing key: its mapping) so the rest can be checked as a whole.

    List items removed are remembered in `moved` (list loc -> original indices). False: nothing left."""
    cut: dict[int, tuple[Any, Loc, set[Any]]] = {}
    for error in errors:
        loc = _error_loc(error)
        if len(loc) == 1 and loc[0] in _STAND_INS:
            data[loc[0]] = _STAND_INS[str(loc[0])]
            continue
        if error["type"] == "missing":
            loc = loc[:-1]
        if not loc:
            return False
        parent = _node(data, loc[:-1])
        if isinstance(parent, dict | list):
            cut.setdefault(id(parent), (parent, loc[:-1], set()))[2].add(loc[-1])
    for parent, ploc, parts in cut.values():
        if isinstance(parent, dict):
            for part in parts:
                parent.pop(part, None)
        else:
            original = moved.setdefault(ploc, list(range(len(parent))))
            for i in sorted((p for p in parts if isinstance(p, int)), reverse=True):
                del parent[i]
                del original[i]
    return True


def _restore(loc: Loc, moved: dict[Loc, list[int]]) -> Loc:
    """`loc` in a pruned document as a loc in the original one."""
    out: list[str | int] = []
    for part in loc:
        key = tuple(out)
        out.append(moved[key][part] if isinstance(part, int) and key in moved else part)
    return tuple(out)


def _order(data: Any, loc: Loc) -> tuple[int, ...]:
    """Where `loc` is in the file: problems are listed in the order of the file (missing keys last)."""
    key: list[int] = []
    for part in loc:
        if isinstance(data, dict):
            names = list(data)
            key.append(names.index(part) if part in names else len(names))
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int):
            key.append(part)
            data = data[part] if 0 <= part < len(data) else None
        else:
            key.append(0)
    return tuple(key)


def format_loc(loc: Loc) -> str:
    """`services.web.health.path`, `hosts[0].docker`; keys that are not plain words are quoted and cut,
    so a problem stays one short line."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part) and len(part) <= 64:
            text += f".{part}" if text else part
        else:
            text += "[" + json.dumps(part if len(part) <= 40 else part[:40] + "...") + "]"
    return text


def parse(raw: Any, source: str = DEFAULT_CONFIG, base_dir: Path | None = None) -> Config:
    """Validate raw YAML data and build a Config; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError([TOP_LEVEL], source)
    shape = _shape(raw)
    if shape:
        raise ConfigError([f"{format_loc(shape[0]) or 'top level'}: {shape[1]}"], source)
    data = _plain(raw)
    problems: list[Problem] = []
    config: Config | None = None
    # Values with problems of their own are left out, and the rest is validated again, so the checks
    # between fields (slot pairs, shared ports, ...) still run: every problem is reported at once.
    pruned: Any = data
    moved: dict[Loc, list[int]] = {}
    for attempt in range(8):
        try:
            file = PsFile.model_validate(pruned)
        except ValidationError as exc:
            errors = [dict(e) for e in exc.errors(include_url=False, include_input=False)]
            if attempt == 0:
                problems += [(_error_loc(e), _message(e, _error_loc(e))) for e in errors]
                pruned = copy.deepcopy(data)
            if not _prune(pruned, errors, moved):
                break
            continue
        config, found = build(file, source, base_dir or Path.cwd(), frozenset(loc for loc, _ in problems))
        problems += [(_restore(loc, moved), message) for loc, message in found]
        break
    mattermost = _node(data, ("notify", "mattermost"))
    if isinstance(mattermost, dict) and {"webhook_url", "url"} & set(mattermost):
        problems.append((("notify", "mattermost"),
                         "the webhook URL is a secret: give it through an environment variable"))
    if problems or config is None:
        problems.sort(key=lambda p: _order(data, p[0]))
        raise ConfigError([f"{format_loc(loc) or 'top level'}: {message}" for loc, message in problems]
                          or ["top level: invalid configuration"], source)
    return config
