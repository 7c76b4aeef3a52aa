"""The CI files under test, the `ps` lines in them, and how such a line is checked against the real CLI."""

from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

REPO = Path(__file__).resolve().parents[2]
JENKINSFILE = REPO / "Jenkinsfile"
GITLAB_CI = REPO / ".gitlab-ci.yml"
GITLAB_TEMPLATE = REPO / "shared" / "gitlab" / "ps-steps.gitlab-ci.yml"
GITLAB_PIPELINE = REPO / "shared" / "gitlab" / "ps-pipeline.gitlab-ci.yml"
README = REPO / "README.md"
JENKINS_VARS = REPO / "shared" / "jenkins" / "vars"
STUB = Path(__file__).resolve().parent / "jenkins_stub.groovy"
TOOLS = REPO / ".tools" / "node_modules" / ".bin"

# Values a shell variable of the CI files may take, for checking option values (choices, numbers).
# A variable not listed here fails the check: every variable a `ps` line uses is accounted for.
SAMPLE_VALUES = {
    "SERVICE": "web",
    "BUILD_ID": "0123456789ab",
    "SLOT": "canary",
    "DEPLOY_TYPE": "canary-auto",
    "CANARY_WEIGHT": "10",
    "HEALTH_RETRIES": "30",
    "NOTIFY_STATUS": "success",
    "PIPELINE_STATUS": "failure",
    "GITLAB_STATE": "success",
    "CI_PIPELINE_URL": "https://gitlab.example.com/group/app/-/pipelines/1",
    "BUILD_URL": "https://jenkins.example.com/job/app/1/",
    "LOG_URL": "https://jenkins.example.com/job/app/1/",
}

GLOBAL_ENV = {"PS_CONFIG"}  # the --config option's variable; the rest are PS_<STEP>_<OPTION>

_SH_LITERAL = re.compile(r"""\bsh\s*\(?\s*(?:script:\s*)?(['"])((?:\\.|(?!\1).)*)\1""")


@dataclass(frozen=True)
class PsLine:
    """One shell command of a CI file: where it is and what it says."""

    file: str
    where: str  # job name or line number
    command: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.where}:{self.command}"


def gitlab_lines(path: Path) -> list[PsLine]:
    """Every script / before_script / after_script line of every job in a GitLab CI file."""
    data = yaml.safe_load(path.read_text())
    lines: list[PsLine] = []
    for name, job in data.items():
        if not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            items = job.get(key) or []
            for item in [items] if isinstance(items, str) else items:
                lines.append(PsLine(path.relative_to(REPO).as_posix(), f"{name}.{key}", str(item)))
    return lines


def groovy_sh_lines(path: Path) -> list[PsLine]:
    """The literal command of every `sh '...'` step in a Groovy file."""
    lines: list[PsLine] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.lstrip().startswith("//"):
            continue
        for match in _SH_LITERAL.finditer(text):
            lines.append(PsLine(path.relative_to(REPO).as_posix(), f"L{number}", match.group(2)))
    return lines


def double_quoted_sh(path: Path) -> list[str]:
    """`sh "..."` steps: Groovy would interpolate them (secrets into the command line), so none allowed."""
    return [m.group(0) for m in _SH_LITERAL.finditer(path.read_text()) if m.group(1) == '"']


def all_lines() -> list[PsLine]:
    """Every shell command in the Jenkinsfile, .gitlab-ci.yml and the shared templates."""
    lines = (groovy_sh_lines(JENKINSFILE) + gitlab_lines(GITLAB_CI) + gitlab_lines(GITLAB_TEMPLATE)
             + gitlab_lines(GITLAB_PIPELINE))
    for var in sorted(JENKINS_VARS.glob("*.groovy")):
        lines += groovy_sh_lines(var)
    return lines


def substitute(token: str, values: dict[str, str] | None = None) -> str:
    """`$VAR` / `${VAR}` replaced by a sample value; KeyError for a variable nobody accounted for."""
    return string.Template(token).substitute(values or SAMPLE_VALUES)


def resolve(command: str, values: dict[str, str] | None = None) -> click.Context:
    """Parse a `ps ...` line and resolve it through the real click CLI, as `ps` would (strict parsing).

    Raises click.UsageError (unknown command or option, bad value, missing required option)."""
    from pipeline_steps.cli import cli

    argv = [substitute(token, values) for token in shlex.split(command)]
    if not argv or argv[0] != "ps":
        raise click.UsageError(f"not a ps line: {command!r}")
    ctx = cli.make_context("ps", argv[1:], resilient_parsing=False)
    group: click.Group = cli
    while True:
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise click.UsageError(f"no step named in {command!r}")
        name, sub, args = group.resolve_command(ctx, rest)
        if sub is None or name is None:
            raise click.UsageError(f"no such step in {command!r}")
        ctx = sub.make_context(name, args, parent=ctx, resilient_parsing=False)
        if not isinstance(sub, click.Group):
            return ctx
        group = sub


def option_env_names() -> set[str]:
    """Every PS_<STEP>_<OPTION> variable the CLI reads (click's auto envvar prefix PS)."""
    from pipeline_steps.cli import COMMANDS, cli

    names = set(GLOBAL_ENV)
    ctx = click.Context(cli, info_name="ps")

    def add(prefix: str, command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                names.add(f"{prefix}_{param.name.upper()}")
        if isinstance(command, click.Group):  # `ps pipeline end --report`: PS_PIPELINE_END_REPORT_PATH
            for name, sub in command.commands.items():
                add(f"{prefix}_{name.upper().replace('-', '_')}", sub)

    for step in COMMANDS:
        command = cli.get_command(ctx, step)
        if command is not None:
            add(f"PS_{step.upper().replace('-', '_')}", command)
    return names


def gitlab_variables(path: Path) -> dict[str, Any]:
    """Global and per-job variables of a GitLab CI file, by where they are set."""
    data = yaml.safe_load(path.read_text())
    found: dict[str, Any] = {}
    for name, value in (data.get("variables") or {}).items():
        found[f"variables.{name}"] = value
    for job_name, job in data.items():
        if isinstance(job, dict):
            for name, value in (job.get("variables") or {}).items():
                found[f"{job_name}.variables.{name}"] = value
            for rule in job.get("rules") or []:
                for name, value in (rule.get("variables") or {}).items():
                    found[f"{job_name}.rules.variables.{name}"] = value
    return found
