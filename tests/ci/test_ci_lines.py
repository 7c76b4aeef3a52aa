"""Every shell line of the CI files is a `ps` line, and every `ps` line resolves through the real CLI."""

from __future__ import annotations

import re

import click
import pytest

from .cifiles import (
    GITLAB_CI,
    GITLAB_TEMPLATE,
    JENKINS_VARS,
    JENKINSFILE,
    PsLine,
    all_lines,
    double_quoted_sh,
    gitlab_variables,
    groovy_sh_lines,
    option_env_names,
    resolve,
)

LINES = all_lines()


def test_every_ci_file_has_its_ps_lines() -> None:
    files = {line.file for line in LINES}
    assert {"Jenkinsfile", ".gitlab-ci.yml", "shared/gitlab/ps-steps.gitlab-ci.yml"} <= files
    assert {f"shared/jenkins/vars/{n}.groovy" for n in ("psBuild", "psDeploy", "psNotify")} <= files
    commands = " ".join(line.command for line in groovy_sh_lines(JENKINSFILE))
    for step in ("ps build", "ps push", "ps deploy-env", "ps health-gate", "ps verify-weights",
                 "ps set-weights", "ps deploy --type", "ps pipeline begin", "ps pipeline end",
                 "ps gitlab-status"):
        assert step in commands, step
    assert "--retries 30" in commands


@pytest.mark.parametrize("line", LINES, ids=[line.id for line in LINES])
def test_shell_line_is_a_ps_step(line: PsLine) -> None:
    assert line.command.startswith("ps "), f"{line.file} {line.where}: only `ps` steps belong in CI files"


@pytest.mark.parametrize("line", LINES, ids=[line.id for line in LINES])
def test_ps_line_resolves_through_the_cli(line: PsLine) -> None:
    try:
        ctx = resolve(line.command)
    except click.UsageError as exc:
        pytest.fail(f"{line.file} {line.where}: `{line.command}`: {exc.format_message()}")
    except KeyError as exc:
        pytest.fail(f"{line.file} {line.where}: variable {exc} has no sample value in cifiles.SAMPLE_VALUES")
    assert ctx.command.name


def test_the_checker_refuses_what_ps_would_refuse() -> None:
    resolve("ps --json context --dotenv")
    with pytest.raises(click.UsageError):
        resolve("ps context --no-such-option")
    with pytest.raises(click.UsageError):
        resolve("ps no-such-step")
    with pytest.raises(KeyError):
        resolve('ps context --dotenv "$UNACCOUNTED"')


def test_no_groovy_interpolated_shell_lines() -> None:
    for path in [JENKINSFILE, *JENKINS_VARS.glob("*.groovy")]:
        assert double_quoted_sh(path) == [], f"{path.name}: use sh '...' so secrets stay shell variables"


def _env_names_in_groovy() -> set[str]:
    found: set[str] = set()
    for path in [JENKINSFILE, *JENKINS_VARS.glob("*.groovy")]:
        text = path.read_text()
        found |= set(re.findall(r"[\"'](PS_[A-Z_]+)=", text))  # withEnv(["PS_X=..."])
        found |= set(re.findall(r"^\s*(PS_[A-Z_]+)\s*=", text, re.MULTILINE))  # environment { PS_X = }
    return found


def test_ps_variables_name_real_options() -> None:
    names = {key.rsplit(".", 1)[-1]
             for path in (GITLAB_CI, GITLAB_TEMPLATE) for key in gitlab_variables(path)}
    used = {n for n in names | _env_names_in_groovy() if n.startswith("PS_")}
    assert used, "expected PS_CONFIG at least"
    unknown = used - option_env_names()
    assert not unknown, f"PS_* variables that no ps option reads: {sorted(unknown)}"
