"""`ps gitlab-status` in-process (so `responses` can stand in for GitLab), through the real CLI entry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from pipeline_steps.cli import main
from testbed.ports import address, free_port

GITLAB = "https://gitlab.example.com"
TOKEN = "glpat-status-token-xyz"
SHA = "89abcdef0123456789abcdef0123456789abcdef"
STATUS_URL = f"{GITLAB}/api/v4/projects/42/statuses/{SHA}"
CI_VARS = ("CI_COMMIT_SHA", "CI_PIPELINE_URL", "CI_COMMIT_BRANCH", "CI_PROJECT_ID", "CI_SERVER_URL",
           "GIT_COMMIT", "BUILD_URL", "JENKINS_URL", "BUILD_NUMBER", "GITLAB_PROJECT", "GITLAB_URL",
           "GITLAB_TOKEN", "BRANCH_NAME", "GIT_BRANCH", "PS_CONFIG")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_ps(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> Run:
    """`code, out, err = run_ps(*args, **env)` through pipeline_steps.cli.main in this process."""
    for name in CI_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # not a git checkout

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else 1), out, err

    return run


@pytest.fixture
def gitlab() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def jenkins_env(**extra: str) -> dict[str, str]:
    return {"GITLAB_URL": GITLAB, "GITLAB_TOKEN": TOKEN, "GITLAB_PROJECT": "42", "GIT_COMMIT": SHA,
            "BUILD_URL": "https://jenkins.example.com/job/app/17/", "BRANCH_NAME": "develop", **extra}


def sent_body(mock: responses.RequestsMock, index: int = 0) -> dict[str, Any]:
    body = mock.calls[index].request.body
    assert body is not None
    return dict(json.loads(body))


def test_sets_the_status_with_the_pipeline_url_from_the_context(run_ps: Run,
                                                                gitlab: responses.RequestsMock) -> None:
    gitlab.post(STATUS_URL, json={"id": 5, "sha": SHA, "status": "running", "name": "ps",
                                  "target_url": "https://jenkins.example.com/job/app/17/"}, status=201)
    code, out, err = run_ps("--json", "gitlab-status", "--state", "running", "--description", "deploying",
                            **jenkins_env())
    assert code == 0, err
    assert sent_body(gitlab) == {"state": "running", "name": "ps", "description": "deploying",
                                 "target_url": "https://jenkins.example.com/job/app/17/", "ref": "develop"}
    request = gitlab.calls[0].request
    assert request.headers["PRIVATE-TOKEN"] == TOKEN
    record = json.loads(out)
    assert record["step"] == "gitlab-status" and record["ok"] is True
    assert (record["state"], record["sha"], record["project"], record["changed"]) == (
        "running", SHA, "42", True)
    assert TOKEN not in out + err
    assert "GitLab status ps=running set on 42@89abcdef0123" in err


def test_options_override_the_context_and_gitlab_ci_variables_work(run_ps: Run,
                                                                   gitlab: responses.RequestsMock) -> None:
    other = "1" * 40
    gitlab.post(f"{GITLAB}/api/v4/projects/team%2Fapp/statuses/{other}", json={"id": 6, "status": "success"},
                status=201)
    code, out, err = run_ps("gitlab-status", "--state", "success", "--name", "deploy/canary", "--sha", other,
                            "--project", "team/app", "--target-url", "https://x.example.com/run/1",
                            GITLAB_TOKEN=TOKEN, CI_SERVER_URL=GITLAB, CI_PROJECT_ID="99", CI_COMMIT_SHA=SHA,
                            CI_COMMIT_BRANCH="develop")
    assert code == 0, err
    assert sent_body(gitlab) == {"state": "success", "name": "deploy/canary",
                                 "target_url": "https://x.example.com/run/1", "ref": "develop"}
    assert "GitLab status deploy/canary=success set on team/app@111111111111" in out


def test_project_falls_back_to_ci_project_id(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    gitlab.post(f"{GITLAB}/api/v4/projects/77/statuses/{SHA}", json={"id": 1, "status": "pending"},
                status=201)
    code, _, err = run_ps("gitlab-status", "--state", "pending", GITLAB_TOKEN=TOKEN, GITLAB_URL=GITLAB,
                          CI_PROJECT_ID="77", CI_COMMIT_SHA=SHA, CI_PIPELINE_URL="https://g/p/1")
    assert code == 0, err
    assert sent_body(gitlab)["target_url"] == "https://g/p/1"


def test_a_status_already_in_that_state_is_fine(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    gitlab.post(STATUS_URL, json={"message": "Cannot transition status via :run from :running"}, status=400)
    code, out, err = run_ps("gitlab-status", "--state", "running", **jenkins_env())
    assert code == 0, err
    assert "already running" in out


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_exit_1_with_one_clear_line(run_ps: Run, gitlab: responses.RequestsMock,
                                                     status: int) -> None:
    gitlab.post(STATUS_URL, json={"message": f"{status} Unauthorized"}, status=status)
    code, out, err = run_ps("--json", "gitlab-status", "--state", "failed", **jenkins_env())
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "GitLab refused" in lines[0] and f"({status})" in lines[0]
    assert "Traceback" not in err and TOKEN not in out + err


def test_unknown_project_is_exit_1(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    gitlab.post(STATUS_URL, json={"message": "404 Project Not Found"}, status=404)
    code, _, err = run_ps("gitlab-status", "--state", "failed", **jenkins_env())
    assert code == 1 and "404" in err


def test_server_error_is_exit_3(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    gitlab.post(STATUS_URL, body="bad gateway", status=502)
    code, _, err = run_ps("gitlab-status", "--state", "failed", **jenkins_env())
    assert code == 3 and "502" in err


def test_unreachable_gitlab_is_exit_3(run_ps: Run) -> None:
    url = f"http://{address()}:{free_port()}"  # nothing listens: a real refused connection
    code, out, err = run_ps("gitlab-status", "--state", "running", **jenkins_env(GITLAB_URL=url))
    assert code == 3
    assert "unreachable" in err and "Traceback" not in err and TOKEN not in out + err


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"GITLAB_TOKEN": ""}, (), "GITLAB_TOKEN is not set"),
    ({"GITLAB_URL": ""}, (), "GITLAB_URL is not set"),
    ({"GITLAB_PROJECT": ""}, (), "no project"),
    ({}, ("--sha", "not-a-sha"), "not a commit sha"),
    ({}, ("--state", "done"), "Invalid value for '--state'"),
])
def test_bad_input_is_exit_2_before_any_request(run_ps: Run, gitlab: responses.RequestsMock,
                                                env: dict[str, str], args: tuple[str, ...],
                                                message: str) -> None:
    state = () if "--state" in args else ("--state", "running")
    code, _, err = run_ps("gitlab-status", *state, *args, **{**jenkins_env(), **env})
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(gitlab.calls) == 0


def test_missing_commit_outside_ci_and_git_is_exit_2(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    code, _, err = run_ps("gitlab-status", "--state", "running", GITLAB_URL=GITLAB, GITLAB_TOKEN=TOKEN,
                          GITLAB_PROJECT="42")
    assert code == 2 and "no commit" in err
    assert len(gitlab.calls) == 0


def test_dry_run_sends_nothing(run_ps: Run, gitlab: responses.RequestsMock) -> None:
    code, out, err = run_ps("--dry-run", "gitlab-status", "--state", "success", **jenkins_env())
    assert code == 0, err
    assert "would set GitLab status ps=success on 42@89abcdef0123" in out
    assert len(gitlab.calls) == 0
