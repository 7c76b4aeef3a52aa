"""CI context: GitLab and Jenkins variables, else the local git checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.context import build_id_of, detect
from pipeline_steps.errors import BadInput

SHA = "0123456789abcdef0123456789abcdef01234567"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "feature/x")
    (tmp_path / "file.txt").write_text("one\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first commit")
    return tmp_path


def test_gitlab_variables(tmp_path: Path) -> None:
    env = {"CI_COMMIT_SHA": SHA.upper(), "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "ignored",
           "CI_COMMIT_AUTHOR": "Kim <kim@example.com>", "CI_COMMIT_TITLE": "Fix login",
           "CI_PIPELINE_URL": "https://gitlab.example.com/g/p/-/pipelines/7",
           "CI_JOB_URL": "https://gitlab.example.com/g/p/-/jobs/70",
           "CI_PROJECT_URL": "https://gitlab.example.com/g/p"}
    ctx = detect(env, tmp_path)
    assert ctx.provider == "gitlab" and ctx.sha == SHA and ctx.build_id == SHA[:12]
    assert (ctx.branch, ctx.author, ctx.title) == ("main", "Kim <kim@example.com>", "Fix login")
    assert ctx.pipeline_url == env["CI_PIPELINE_URL"] and ctx.job_url == env["CI_JOB_URL"]
    assert ctx.commit_url() == f"https://gitlab.example.com/g/p/-/commit/{SHA}"
    assert ctx.who == env["CI_PIPELINE_URL"]
    assert not ctx.dirty


def test_gitlab_ref_name_when_no_branch(tmp_path: Path) -> None:
    ctx = detect({"CI_COMMIT_SHA": SHA, "CI_COMMIT_REF_NAME": "v1.2.0"}, tmp_path)
    assert ctx.branch == "v1.2.0"


@pytest.mark.parametrize(("variables", "branch"), [
    ({"GIT_BRANCH": "origin/develop"}, "develop"),
    ({"GIT_BRANCH": "refs/heads/release"}, "release"),
    ({"GIT_BRANCH": "refs/remotes/origin/hotfix"}, "hotfix"),
    ({"GIT_BRANCH": "origin/develop", "BRANCH_NAME": "feature/a"}, "feature/a"),
])
def test_jenkins_variables(tmp_path: Path, variables: dict[str, str], branch: str) -> None:
    env = {"GIT_COMMIT": SHA, "BUILD_NUMBER": "42", "JOB_NAME": "shop/deploy",
           "BUILD_URL": "https://jenkins.example.com/job/shop/42/", **variables}
    ctx = detect(env, tmp_path)
    assert ctx.provider == "jenkins" and ctx.build_id == SHA[:12] and ctx.branch == branch
    assert ctx.pipeline_url == ctx.job_url == "https://jenkins.example.com/job/shop/42/"


def test_jenkins_without_build_url_names_job_and_number(tmp_path: Path) -> None:
    ctx = detect({"GIT_COMMIT": SHA, "BUILD_NUMBER": "42", "JOB_NAME": "shop"}, tmp_path)
    assert ctx.job_url == "shop #42"


def test_clone_url_credentials_are_dropped(tmp_path: Path) -> None:
    env = {"GIT_COMMIT": SHA, "BUILD_NUMBER": "1",
           "GIT_URL": "https://gitlab-ci-token:glpat-SECRET@gitlab.example.com/g/p.git"}
    ctx = detect(env, tmp_path)
    assert ctx.source_url == "https://gitlab.example.com/g/p.git"
    assert "SECRET" not in str(ctx.as_dict())


@pytest.mark.parametrize("bad", ["not-a-sha", "12345", "zz" * 20, "0123456789abcdef; rm -rf /"])
def test_bad_sha_is_bad_input(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BadInput, match="CI_COMMIT_SHA is not a commit sha"):
        detect({"CI_COMMIT_SHA": bad}, tmp_path)


def test_local_checkout(repo: Path) -> None:
    ctx = detect({}, repo)
    sha = git(repo, "rev-parse", "HEAD")
    assert ctx.provider == "local" and ctx.sha == sha and ctx.build_id == sha[:12]
    assert ctx.branch == "feature/x" and ctx.title == "first commit"
    assert ctx.author == "Dev <dev@example.com>" and not ctx.dirty


def test_untracked_files_do_not_make_it_dirty(repo: Path) -> None:
    (repo / "new.txt").write_text("x")
    assert not detect({}, repo).dirty


def test_dirty_work_tree_marks_build_id(repo: Path) -> None:
    (repo / "file.txt").write_text("changed\n")
    ctx = detect({}, repo)
    assert ctx.dirty and ctx.build_id == ctx.sha[:12] + "-dirty"


def test_local_remote_credentials_are_dropped(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://me:token123@github.com/me/app.git")
    ctx = detect({}, repo)
    assert ctx.source_url == "https://github.com/me/app.git"
    assert ctx.commit_url() == f"https://github.com/me/app/commit/{ctx.sha}"


def test_ssh_remote_gives_a_web_commit_url(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "git@gitlab.example.com:g/p.git")
    ctx = detect({}, repo)
    assert ctx.commit_url() == f"https://gitlab.example.com/g/p/-/commit/{ctx.sha}"


def test_jenkins_needs_its_own_variables(repo: Path) -> None:
    # GIT_COMMIT alone (e.g. exported by a developer) is not Jenkins: the checkout wins
    ctx = detect({"GIT_COMMIT": SHA}, repo)
    assert ctx.provider == "local"


def test_outside_any_checkout_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # git must not look above
    with pytest.raises(BadInput, match="give --build-id"):
        detect({}, tmp_path)


@given(st.text(alphabet="0123456789abcdef", min_size=12, max_size=64), st.booleans())
def test_build_id_is_twelve_hex_plus_dirty(sha: str, dirty: bool) -> None:
    build_id = build_id_of(sha, dirty)
    assert build_id.startswith(sha[:12]) and len(build_id) == 12 + (6 if dirty else 0)
    assert build_id.endswith("-dirty") == dirty


def test_a_build_id_that_is_no_image_tag_is_refused() -> None:
    from pipeline_steps.context import CIContext

    with pytest.raises(BadInput, match="is not a valid image tag"):
        CIContext(provider="gitlab", sha=SHA, build_id="A:B")
    with pytest.raises(BadInput, match="is not a valid image tag"):
        CIContext(provider="local", sha=SHA, build_id="-" + SHA[:11])


@pytest.mark.parametrize("name", ["CI_COMMIT_SHA", "GIT_COMMIT"])
@pytest.mark.parametrize("bad", ["../../etc", "A:B", "-rf", "0123456789ab\n", "x" * 200])
def test_ci_variables_that_would_make_a_bad_build_id_are_refused(tmp_path: Path, name: str, bad: str) -> None:
    env = {name: bad, "BUILD_NUMBER": "1"}
    with pytest.raises(BadInput, match=f"{name} is not a commit sha"):
        detect(env, tmp_path)
