"""The ps CLI as a user runs it: help, exit codes, env options, config and context commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SHA = "0123456789abcdef0123456789abcdef01234567"


def two_services(workdir: Path) -> dict[str, Any]:
    for name in ("web", "api"):
        (workdir / name).mkdir(exist_ok=True)
        (workdir / name / "Dockerfile").write_text("FROM scratch\n")
    return {"app": "shop", "registry": "127.0.0.1:5000",
            "services": {"web": {"context": "web", "slots": {"stable": 18081, "canary": 18082},
                                 "env": {"DB_PASSWORD": "hunter2hunter2", "MODE": "fast"}},
                         "api": {"context": "api", "slots": {"blue": 18091, "green": 18092}}}}


def test_help_lists_steps_and_exit_codes(ps: Any) -> None:
    done = ps("--help")
    assert done.returncode == 0
    for word in ("build", "push", "config", "context", "Exit codes:", "3  a needed system is unreachable",
                 "PS_<STEP>_<OPTION>"):
        assert word in done.stdout


def test_help_does_not_import_heavy_libraries(ps: Any) -> None:
    code = ("import sys\nfrom pipeline_steps import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'docker', 'requests', 'yaml', 'gitlab', 'crossplane', 'tenacity'}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], env=ps.env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version(ps: Any) -> None:
    done = ps("--version")
    assert done.returncode == 0 and "0.1.0" in done.stdout


def test_bad_usage_exits_2(ps: Any) -> None:
    assert ps("--no-such-option").returncode == 2
    done = ps("build", "--no-such-option")
    assert done.returncode == 2 and "No such option" in done.stderr


def test_missing_config_exits_2_in_one_line(ps: Any) -> None:
    done = ps("config", "validate")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ps: ps.yaml: config file not found: ps.yaml (use --config FILE or PS_CONFIG)"]


def test_validate_ok_prints_a_summary(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir), name="deploy.yaml")
    done = ps("config", "validate", env={"PS_CONFIG": "deploy.yaml"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ok: deploy.yaml is valid"
    assert any("service web: 127.0.0.1:5000/shop/web" in line for line in lines)
    assert any("slots blue 18091, green 18092" in line for line in lines)


def test_validate_lists_every_problem_with_its_path(ps: Any, project: Any) -> None:
    project({"app": "shop", "registry": "r", "services": {
        "backend": {"slots": {"stable": 1, "canary": 2}, "health": {"path": "health", "timeout": "x"}}},
        "canary": {"tolerance": 0}})
    done = ps("config", "validate")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert 'ps: ps.yaml: services.backend.health.path: must start with "/"' in lines
    timeout = "ps: ps.yaml: services.backend.health.timeout: not a duration"
    assert any(line.startswith(timeout) for line in lines)
    assert "ps: ps.yaml: canary.tolerance: must be >= 1" in lines
    assert len(lines) == 3 and "Traceback" not in done.stderr


def test_validate_failure_as_json(ps: Any, project: Any) -> None:
    project({"app": "shop", "registry": "r", "services": {
        "web": {"slots": {"stable": 1, "canary": 2}, "health": {"path": "x"}}}})
    done = ps("--json", "config", "validate")
    assert done.returncode == 2
    record = json.loads(done.stdout)
    assert record["ok"] is False and record["exit_code"] == 2
    assert record["problems"] == ['services.web.health.path: must start with "/"']


def test_traceback_only_with_verbose(ps: Any, project: Any) -> None:
    project({"app": "shop"})
    quiet, loud = ps("config", "validate"), ps("-v", "config", "validate")
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr


def test_show_masks_secrets_as_yaml_and_json(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    env = {"MATTERMOST_WEBHOOK_URL": "https://chat.example.com/hooks/s3cr3t-hook"}
    done = ps("config", "show", env=env)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["timezone"] == "Asia/Seoul"
    assert shown["services"]["web"]["env"] == {"DB_PASSWORD": "****", "MODE": "fast"}
    assert shown["services"]["web"]["health"]["retries"] == 30
    assert shown["notify"]["webhook"] == "set (masked)"
    as_json = ps("--json", "config", "show", env=env)
    record = json.loads(as_json.stdout)
    assert record["step"] == "config-show" and record["config"]["services"]["api"]["slots"]["blue"] == 18091
    for out in (done.stdout + done.stderr, as_json.stdout + as_json.stderr):
        assert "hunter2hunter2" not in out and "s3cr3t-hook" not in out


def test_step_options_come_from_the_environment(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    env = {"PS_BUILD_SERVICE": "api", "PS_BUILD_BUILD_ID": "fromenv01"}
    done = ps("--dry-run", "--json", "build", env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert [i["image"] for i in record["images"]] == ["127.0.0.1:5000/shop/api:fromenv01"]
    assert "would build api" in done.stderr and "would build web" not in done.stderr


def test_unknown_service_from_the_environment_exits_2(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    done = ps("--dry-run", "build", "--build-id", "x1", env={"PS_BUILD_SERVICE": "nope"})
    assert done.returncode == 2
    assert done.stderr.strip() == "ps: unknown service 'nope' (configured: api, web)"


def test_bad_build_inputs_exit_2(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    for args, message in ((["--build-id", "no/slash"], "is not a valid image tag"),
                          (["--build-id", "x1", "--tag", "bad tag"], "is not a valid image tag"),
                          (["--build-id", "x1", "--build-arg", "=x"], "give NAME=VALUE"),
                          (["--build-id", "x1", "--build-arg", "UNSET_VAR_XYZ"],
                           "$UNSET_VAR_XYZ is not set")):
        done = ps("--dry-run", "build", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_no_commit_and_no_build_id_exits_2(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    done = ps("--dry-run", "build", env={"GIT_CEILING_DIRECTORIES": str(workdir.parent)})
    assert done.returncode == 2 and "give --build-id" in done.stderr


def test_context_local(ps: Any, git_repo: Path) -> None:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    done = ps("--json", "context")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["provider"] == "local" and record["sha"] == sha and record["build_id"] == sha[:12]
    assert record["branch"] == "main" and record["title"] == "sample app"
    dotenv = ps("context", "--dotenv")
    assert dotenv.stdout.splitlines()[:2] == [f"BUILD_ID={sha[:12]}", f"COMMIT_SHA={sha}"]
    human = ps("context")
    assert any(line.split() == ["build_id", sha[:12]] for line in human.stdout.splitlines())


def test_context_from_jenkins_and_gitlab(ps: Any) -> None:
    jenkins = ps("context", "--dotenv", env={"GIT_COMMIT": SHA, "BUILD_NUMBER": "9",
                                             "GIT_BRANCH": "origin/develop"})
    assert jenkins.returncode == 0, jenkins.stderr
    assert jenkins.stdout.splitlines() == [f"BUILD_ID={SHA[:12]}", f"COMMIT_SHA={SHA}",
                                           "COMMIT_BRANCH=develop"]
    gitlab = ps("--json", "context", env={"CI_COMMIT_SHA": SHA, "CI_COMMIT_BRANCH": "main",
                                          "CI_PIPELINE_URL": "https://gitlab.example.com/p/-/pipelines/1"})
    record = json.loads(gitlab.stdout)
    assert record["provider"] == "gitlab" and record["pipeline_url"].endswith("/pipelines/1")


def test_context_outside_git_and_ci_exits_2(ps: Any, workdir: Path) -> None:
    done = ps("context", env={"GIT_CEILING_DIRECTORIES": str(workdir.parent)})
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_help_reads_short_help_without_importing_steps(ps: Any) -> None:
    code = ("import sys\nfrom pipeline_steps import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "steps = ('pipeline_steps.operations.', 'pipeline_steps.deploy', 'pipeline_steps.cli.')\n"
            "print(sorted(m for m in sys.modules\n"
            "             if m.startswith(steps) and m != 'pipeline_steps.cli.output'))\n")
    done = subprocess.run([sys.executable, "-c", code], env=ps.env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_help_summaries_match_each_commands_docstring() -> None:
    """`ps --help` shows the COMMANDS summaries without importing steps; they must say what the
    commands themselves say."""
    import click

    from pipeline_steps.cli import COMMANDS, LazyGroup, cli

    ctx = click.Context(cli)
    assert isinstance(cli, LazyGroup)
    for name, (_target, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        first_line = " ".join((command.help or "").split("\n\n")[0].split())
        assert summary == first_line, name


def test_every_step_help_loads_no_heavy_library() -> None:
    """`ps <step> --help` stays fast: docker, gitlab, requests, crossplane and yaml load when a step runs."""
    from pipeline_steps.cli import COMMANDS

    code = (
        "import sys\n"
        "from pipeline_steps.cli import main\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        main([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print([m for m in ('docker', 'gitlab', 'requests', 'crossplane', 'yaml') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *COMMANDS], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_usage_errors_are_one_ps_line_with_a_hint(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    cases = [
        (["set-weights", "--frobnicate"], "ps: No such option '--frobnicate' (try 'ps set-weights --help')"),
        (["set-weights"], "ps: Missing option '--canary' (try 'ps set-weights --help')"),
        (["lock", "frobnicate"], "ps: No such command 'frobnicate' (try 'ps lock --help')"),
        (["--json", "frobnicate"], "ps: No such command 'frobnicate' (try 'ps --help')"),
        (["history", "stray"], "ps: Got unexpected extra argument (stray) (try 'ps history --help')"),
        (["--dry-run", "build", "--build-id", "A:B"],
         "ps: Invalid value for '--build-id': 'A:B' is not a valid image tag "
         "(letters, digits, '_', '.', '-', not first '.' or '-', at most 128) (try 'ps build --help')"),
        (["--dry-run", "set-weights", "--canary", "10.5"],
         "ps: Invalid value for '--canary': '10.5' is not a whole percent 0..100 in digits "
         "(try 'ps set-weights --help')"),
    ]
    for args, line in cases:
        done = ps(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.splitlines() == [line] and done.stdout == ""


def test_bad_choice_lists_the_choices_on_the_one_line(ps: Any) -> None:
    done = ps("mattermost-notify", "--status", "nope")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "'nope' is not one of 'started', 'success', 'failure', 'rolled-back'" in done.stderr


def test_json_after_the_step_is_the_global_json(ps: Any, project: Any, workdir: Path) -> None:
    project(two_services(workdir))
    for args in (["history", "--limit", "3", "--json"], ["--json", "history", "--limit", "3"],
                 ["config", "validate", "--json"], ["lock", "status", "--json"]):
        done = ps(*args)
        assert done.returncode == 0, (args, done.stderr)
        record = json.loads(done.stdout)
        assert record["ok"] is True and record["step"] in ("history", "config-validate", "lock"), args
    help_text = ps("history", "--help").stdout
    assert "--json" in help_text and "Same as ps --json" in help_text


def test_thread_failures_and_warnings_are_masked(ps: Any, workdir: Path) -> None:
    code = ("import os, sys, threading, warnings\n"
            "from pipeline_steps import cli\n"
            "import click\n"
            "@click.command('boom')\n"
            "def boom():\n"
            "    secret = os.environ['DEPLOY_TOKEN']\n"
            "    warnings.warn('token ' + secret)\n"
            "    def fail():\n"
            "        raise RuntimeError('in a thread with ' + secret)\n"
            "    t = threading.Thread(target=fail, name='worker')\n"
            "    t.start(); t.join()\n"
            "cli.cli.add_command(boom)\n"
            "cli.COMMANDS['boom'] = ('pipeline_steps.cli:cli', 'x')\n"
            "cli.LazyGroup.get_command = lambda self, ctx, name: self.commands.get(name)\n"
            "cli.main(sys.argv[1:])\n")
    for verbose in ([], ["-v"]):
        done = subprocess.run([sys.executable, "-c", code, *verbose, "boom"],
                              env={**ps.env, "DEPLOY_TOKEN": "dt-0123456789-secret"}, cwd=workdir,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "dt-0123456789-secret" not in done.stdout + done.stderr
        assert "ps: internal error in thread worker: RuntimeError: in a thread with ****" in done.stderr
        assert "UserWarning: token ****" in done.stderr
        assert ("Traceback" in done.stderr) == bool(verbose)


def test_a_missing_argument_is_one_ps_line(ps: Any, workdir: Path) -> None:
    code = ("import sys\n"
            "import click\n"
            "from pipeline_steps import cli\n"
            "@click.command('retry')\n"
            "@click.argument('delivery_id', metavar='ID', type=int)\n"
            "def retry(delivery_id):\n"
            "    pass\n"
            "cli.cli.add_command(retry)\n"
            "cli.COMMANDS['retry'] = ('pipeline_steps.cli:cli', 'x')\n"
            "cli.LazyGroup.get_command = lambda self, ctx, name: self.commands.get(name)\n"
            "cli.main(sys.argv[1:])\n")
    for args, line in ((["retry"], "ps: Missing argument 'ID' (try 'ps retry --help')"),
                       (["retry", "x"], "ps: Invalid value for 'ID': 'x' is not a valid integer "
                                        "(try 'ps retry --help')")):
        done = subprocess.run([sys.executable, "-c", code, *args], env=ps.env, cwd=workdir,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and done.stderr.splitlines() == [line], done.stderr
