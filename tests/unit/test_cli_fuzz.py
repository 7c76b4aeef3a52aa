"""Fuzzing the CLI's options: garbage and mutated argument lists for every step, run in-process.

Each run goes through `pipeline_steps.cli.main` (the real exit codes) with a valid minimal ps.yaml and
no reachable system: DOCKER_HOST and the registry point at a closed loopback port, no webhook URL, no
GitLab. Invariants: no traceback, no internal error, no hang (a deadline per run), exit 0..3, and a
value its option's grammar refuses is exit 2 with one `ps:` line, never exit 0.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline_steps.cli import COMMANDS, cli, main
from pipeline_steps.cli.types import Duration, HttpUrl, ImageTag, Percent

DEADLINE_S = 10.0
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))  # FUZZ_SCALE=10 for a longer hunt (3000 and 2500 examples)
SHA = "0123456789abcdef0123456789abcdef01234567"
TAG_GRAMMAR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
DURATION_GRAMMAR = re.compile(r"[ \t]*([0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?)"
                              r"(ms|s|m|h)?[ \t]*", re.ASCII | re.IGNORECASE)
# Values that broke the CLI once, or that look like numbers to Python but not to a person.
NASTY = ["", " ", "NaN", "nan", "inf", "-inf", "-1", "101", "1e2", "１０", "10.5", "0x10", "+5", "1_0",
         "٣",
         "A:B", "../../etc", "-rf", "x" * 200, "--", "-", "\n", "10\n", "1e400", "9" * 30, "previous",
         "stable;rm", "$(id)", "%s", "{}", "\u202e", "0", "100", "10"]
USAGE_ERRORS = ("Invalid value", "No such option", "No such command", "Missing option",
                "requires an argument", "unexpected extra argument")
# Free text never holds ':' or '/', so no value can name a URL or host:port beyond loopback.
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00:/"),
               max_size=30)


class Hang(BaseException):
    """Raised by the per-run deadline (a BaseException, so no `except Exception` swallows it)."""


@dataclass
class Ran:
    code: int
    out: str
    err: str
    args: list[str]

    @property
    def text(self) -> str:
        return self.out + self.err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str | None]]:
    """The work directory and environment every run gets."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "web").mkdir()
    (root / "web" / "Dockerfile").write_text("FROM scratch\n")
    port, stable, canary = _closed_port(), _closed_port(), _closed_port()
    (root / "ps.yaml").write_text(
        "app: shop\n"
        f"registry: 127.0.0.1:{port}\n"
        f"hosts: [{{name: local, docker: 'tcp://127.0.0.1:{port}'}}]\n"
        "services:\n"
        f"  web: {{context: web, slots: {{stable: {stable}, canary: {canary}}}}}\n")
    env: dict[str, str | None] = {name: None for name in os.environ
                                  if name.startswith(("PS_", "CI_", "GIT", "JENKINS", "BUILD_", "GITLAB",
                                                      "MATTERMOST", "WEBHOOK", "REGISTRY_"))}
    env.update({"PS_CONFIG": str(root / "ps.yaml"), "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
                "XDG_STATE_HOME": str(root / "state"), "HOME": str(root), "CI_COMMIT_SHA": SHA,
                "GIT_CEILING_DIRECTORIES": str(root.parent), "NO_PROXY": "*", "no_proxy": "*",
                # a health gate given no policy gives up at once
                "PS_HEALTH_GATE_RETRIES": "1", "PS_HEALTH_GATE_INTERVAL": "10ms",
                "PS_HEALTH_GATE_TIMEOUT": "100ms"})
    env["__root__"] = str(root)
    yield env


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang()


def run_ps(bed: dict[str, str | None], args: list[str]) -> Ran:
    """`ps ARGS` in this process, as the console script runs it; Hang after DEADLINE_S."""
    env = {k: v for k, v in bed.items() if k != "__root__"}
    root = bed["__root__"]
    assert root is not None
    runner = CliRunner()
    code: int | None = None
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    cwd = os.getcwd()
    with runner.isolation(env=env) as (out, err, _mixed):
        os.chdir(root)
        signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
        try:
            main(args)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 99)
        except Hang:
            pytest.fail(f"no answer within {DEADLINE_S} s: ps {args!r}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.chdir(cwd)
        stdout, stderr = out.getvalue(), err.getvalue()
    assert code is not None, f"ps {args!r} returned without exiting"
    return Ran(code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), args)


# ---------------------------------------------------------------- the steps and their options


def leaves() -> list[tuple[list[str], click.Command]]:
    """Every runnable step: (`["lock", "status"]`, its command)."""
    ctx = click.Context(cli, info_name="ps")
    found: list[tuple[list[str], click.Command]] = []

    def walk(path: list[str], command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk([*path, name], sub)
        else:
            found.append((path, command))

    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk([name], command)
    return found


LEAVES = leaves()
IDS = [" ".join(path) for path, _ in LEAVES]


def value_options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag and p.opts
            and p.opts[0] not in ("--help",)]


# What an option means decides its grammar, whatever type the step declares (so a step that loses its
# type fails here): BUILD_IDs and tags follow Docker's tag grammar, weights are whole percents.
TAG_OPTIONS = {"build_id", "tags", "tag"}
PERCENT_OPTIONS = {"canary_pct", "weight", "expect_canary", "canary"}


def checked(param: click.Parameter) -> bool:
    """True when the option's values have a grammar this test knows independently."""
    kind = param.type
    return param.name in TAG_OPTIONS | PERCENT_OPTIONS | {"to"} or isinstance(
        kind, click.Choice | ImageTag | Percent | HttpUrl | Duration | click.IntRange | click.FloatRange) \
        or kind in (click.INT, click.FLOAT)


def valid(param: click.Parameter, value: str) -> bool:
    """The grammar of `param`'s values, written independently of the CLI's own checks."""
    kind = param.type
    if param.name in TAG_OPTIONS or param.name == "to":  # `ps deploy --to BUILD_ID|previous`
        return TAG_GRAMMAR.fullmatch(value) is not None or (param.name == "to" and value == "previous")
    if param.name in PERCENT_OPTIONS:
        return value.isascii() and value.isdigit() and len(value) <= 3 and int(value) <= 100
    if isinstance(kind, HttpUrl):
        return value == "" or re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?", value,
                                           re.ASCII) is not None
    if isinstance(kind, Duration):
        if not DURATION_GRAMMAR.fullmatch(value):
            return False
        text = value.strip(" \t").lower()
        unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "")
        factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
        seconds = float(text[: len(text) - len(unit)]) * factor
        return math.isfinite(seconds) and seconds <= 365 * 86400
    if isinstance(kind, click.Choice):
        choices = [str(c) for c in kind.choices]
        if kind.case_sensitive:
            return value in choices
        return value.casefold() in [c.casefold() for c in choices]
    if isinstance(kind, click.IntRange) or kind is click.INT:
        try:
            number: float = int(value)
        except ValueError:
            return False
    else:
        try:
            number = float(value)
        except ValueError:
            return False
        if not math.isfinite(number):
            return False
    if isinstance(kind, click.IntRange | click.FloatRange):
        if kind.min is not None and (number < kind.min or (kind.min_open and number == kind.min)):
            return False
        if kind.max is not None and (number > kind.max or (kind.max_open and number == kind.max)):
            return False
    return True


def sample(param: click.Parameter) -> str:
    """A small valid value (numbers small, so a step given it finishes at once)."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, ImageTag):
        return "0123456789ab"
    if isinstance(kind, Percent):
        return "10"
    if isinstance(kind, HttpUrl):
        return "http://127.0.0.1:1/log"
    if isinstance(kind, Duration):
        return "10ms"
    if isinstance(kind, click.IntRange | click.FloatRange):
        return str(kind.min if kind.min is not None else 1)
    if kind in (click.INT, click.FLOAT):
        return "1"
    if param.name in ("to", "color"):
        return "blue"
    return "web" if param.name in ("service", "service_names") else "x"


def base_args(path: list[str], command: click.Command) -> list[str]:
    """The step with its required options and arguments given valid values."""
    args = list(path)
    for param in command.params:
        if param.required and isinstance(param, click.Option):
            args += [param.opts[0], sample(param)]
        elif param.required and isinstance(param, click.Argument):
            args.append(sample(param))
    return args


def global_prefix(path: list[str], dry_run: bool, json_mode: bool) -> list[str]:
    prefix = ["--dry-run"] if dry_run or path[:2] == ["webhook", "serve"] else []
    return prefix + (["--json"] if json_mode else [])


def one_failure_line(ran: Ran) -> None:
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ps: "), (ran.args, ran.err)


def no_crash(ran: Ran) -> None:
    assert ran.code in (0, 1, 2, 3), (ran.args, ran.code, ran.err[-2000:])
    assert "Traceback" not in ran.text and "internal error" not in ran.text, (ran.args, ran.err[-3000:])
    if ran.code:
        assert any(line.startswith("ps: ") for line in ran.err.splitlines()), (ran.args, ran.code, ran.err)


# ---------------------------------------------------------------- known cases


@pytest.mark.parametrize("args", [
    ["build", "--build-id", "A:B"], ["build", "--build-id", "../../etc"], ["build", "--build-id", "-rf"],
    ["build", "--build-id", "x" * 200], ["push", "--build-id", "A:B"], ["deploy-env", "--slot", "canary",
                                                                       "--build-id", "../../etc"],
    ["deploy", "--type", "stable", "--build-id", "-rf"], ["deploy", "--type", "rollback", "--to", "../../x"],
    ["build", "--build-id", "x1", "--tag", "a/b"], ["set-weights", "--canary", "NaN"],
    ["set-weights", "--canary", "inf"], ["set-weights", "--canary", "-1"], ["set-weights", "--canary", "101"],
    ["set-weights", "--canary", "1e2"], ["set-weights", "--canary", "１０"],
    ["set-weights", "--canary", "10.5"],
    ["deploy", "--type", "canary-manual", "--weight", "NaN"],
    ["verify-weights", "--expect-canary", "1e2"],
    ["mattermost-notify", "--status", "success", "--weight", "１０"], ["health-gate", "--interval", "１s"],
    ["set-weights", "--frobnicate"], ["set-weights"], ["deploy", "--type", "nope"], ["mattermost-notify"],
    ["lock", "frobnicate"], ["history", "--limit", "x"], ["history", "extra"], ["--json", "no-such-step"],
    ["health-gate", "--retries"], ["verify-weights", "--probe", "-5"],
    ["verify-weights", "--tolerance", "-1"],
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_known_bad_inputs_exit_2_in_one_line(bed: dict[str, str | None], args: list[str],
                                             dry_run: bool) -> None:
    ran = run_ps(bed, (["--dry-run"] if dry_run else []) + args)
    assert ran.code == 2, (args, ran.code, ran.err)
    one_failure_line(ran)
    assert any(kind in ran.err for kind in USAGE_ERRORS), ran.err  # refused by the CLI, not later
    assert ran.out == ""


def test_usage_errors_name_the_step_and_its_help(bed: dict[str, str | None]) -> None:
    ran = run_ps(bed, ["set-weights", "--frobnicate"])
    assert ran.err.strip() == "ps: No such option '--frobnicate' (try 'ps set-weights --help')"
    ran = run_ps(bed, ["mattermost-notify", "--status", "nope"])
    assert ran.err.startswith("ps: Invalid value for '--status': 'nope' is not one of 'started'")
    assert ran.err.strip().endswith("(try 'ps mattermost-notify --help')")


def test_valid_values_pass_the_parse(bed: dict[str, str | None]) -> None:
    """The fuzzed invariants are not met by refusing everything: good values get past the options."""
    for args in (["set-weights", "--canary", "10"], ["deploy", "--type", "rollback", "--to", "previous"],
                 ["build", "--build-id", "v1.2.3_rc-1"], ["history", "--limit", "3", "--json"]):
        ran = run_ps(bed, ["--dry-run", *args])
        assert "Invalid value" not in ran.err and "No such option" not in ran.err, (args, ran.err)
        no_crash(ran)
    ran = run_ps(bed, ["history", "--limit", "3", "--json"])
    assert ran.code == 0 and '"step": "history"' in ran.out


# ---------------------------------------------------------------- generated cases

STEPS = st.sampled_from(LEAVES)


@st.composite
def bad_value_case(draw: st.DrawFn) -> tuple[list[str], click.Option, str, list[str]]:
    path, command = draw(STEPS.filter(lambda leaf: any(checked(p) for p in value_options(leaf[1]))))
    option = draw(st.sampled_from([p for p in value_options(command) if checked(p)]))
    value = draw(st.one_of(st.sampled_from(NASTY), TEXT, st.text(max_size=8).filter(lambda s: "\x00" not in s)
                           .map(lambda s: s.replace(":", "").replace("/", ""))))
    prefix = global_prefix(path, draw(st.booleans()), draw(st.booleans()))
    name = draw(st.sampled_from(option.opts))
    args = [*prefix, *base_args(path, command), name, value]
    return path, option, value, args


@settings(max_examples=300 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(case=bad_value_case())
def test_a_value_its_grammar_refuses_is_exit_2(bed: dict[str, str | None],
                                               case: tuple[list[str], click.Option, str, list[str]]) -> None:
    path, option, value, args = case
    ran = run_ps(bed, args)
    no_crash(ran)
    if not valid(option, value):
        assert ran.code == 2, (args, ran.code, ran.err)
        one_failure_line(ran)
        assert "Invalid value" in ran.err or "requires an argument" in ran.err, (args, ran.err)


def _mutated(draw: st.DrawFn, path: list[str], command: click.Command) -> list[str]:
    args = base_args(path, command)[len(path):]
    options = value_options(command)
    flags = [p for p in command.params if isinstance(p, click.Option) and p.is_flag and p.opts]
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["option", "flag", "garbage", "unknown", "drop", "dup", "swap"]))
        if action == "option" and options:
            option = draw(st.sampled_from(options))
            value = draw(st.one_of(st.sampled_from(NASTY), TEXT, st.just(sample(option))))
            if checked(option) and valid(option, value):
                value = sample(option)  # keep numbers small: a valid run must end at once
            args += [draw(st.sampled_from(option.opts)), value]
        elif action == "flag" and flags:
            args.append(draw(st.sampled_from(draw(st.sampled_from(flags)).opts)))
        elif action == "garbage":
            args.insert(draw(st.integers(0, len(args))), draw(st.one_of(TEXT, st.sampled_from(NASTY))))
        elif action == "unknown":
            args.append("--" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)))
        elif action == "drop" and args:
            del args[draw(st.integers(0, len(args) - 1))]
        elif action == "dup" and args:
            args.append(args[draw(st.integers(0, len(args) - 1))])
        elif action == "swap" and len(args) > 1:
            i, j = draw(st.integers(0, len(args) - 1)), draw(st.integers(0, len(args) - 1))
            args[i], args[j] = args[j], args[i]
    return args


@st.composite
def mutated_case(draw: st.DrawFn) -> list[str]:
    path, command = draw(STEPS)
    rest = _mutated(draw, path, command)
    if path[0] in ("health-gate", "webhook"):  # an unchecked value could make a valid, long run
        rest = [a for a in rest if a not in ("--retries", "--interval", "--timeout", "--start-period")]
    prefix = global_prefix(path, draw(st.booleans()), draw(st.booleans()))
    return [*prefix, *path, *rest]


@settings(max_examples=250 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=mutated_case())
def test_mutated_argument_lists_never_crash_or_hang(bed: dict[str, str | None], args: list[str]) -> None:
    ran = run_ps(bed, args)
    event(f"exit {ran.code}")
    no_crash(ran)
    if ran.code == 2 and ("No such option" in ran.err or "Invalid value" in ran.err
                          or "unexpected extra argument" in ran.err):
        one_failure_line(ran)


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_every_step_refuses_an_unknown_option_and_a_stray_argument(
        bed: dict[str, str | None], path: list[str], command: click.Command) -> None:
    ran = run_ps(bed, [*global_prefix(path, True, False), *base_args(path, command), "--no-such-opt"])
    assert ran.code == 2 and "No such option '--no-such-opt'" in ran.err, ran.err
    one_failure_line(ran)
    if not any(isinstance(p, click.Argument) and p.nargs == -1 for p in command.params):
        ran = run_ps(bed, [*global_prefix(path, True, False), *base_args(path, command), "stray", "words"])
        assert ran.code == 2, (path, ran.err)
        one_failure_line(ran)


def test_the_fuzz_bed_reaches_nothing(bed: dict[str, str | None]) -> None:
    """A step that needs the engine meets a closed port: exit 3 in one line, quickly."""
    ran = run_ps(bed, ["deploy-env", "--slot", "canary", "--build-id", "0123456789ab"])
    assert ran.code == 3, ran.err
    one_failure_line(ran)
    assert Path(str(bed["__root__"])).is_dir()
