"""`ps build` against the real Docker engine, on the sample app in a git checkout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

BASE_ARG = "BASE_IMAGE=pipeline-steps/busybox:base"
SHA = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def sample_project(git_repo: Path, project: Any, app_name: str, base_image: str) -> dict[str, Any]:
    config = {"app": app_name, "registry": "127.0.0.1:5000",
              "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}}}}
    project(config)
    return config


def head_sha(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def build(docker_ps: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`ps [--json] build --build-arg BASE_IMAGE=... ARGS` (a leading --json is the global option)."""
    lead = [a for a in args[:1] if a == "--json"]
    return docker_ps(*lead, "build", "--build-arg", BASE_ARG, *args[len(lead):], **kw)


def test_build_tags_labels_and_bakes_the_build_id(docker_ps: Any, docker_client: Any, git_repo: Path,
                                                  sample_project: dict[str, Any], app_name: str) -> None:
    sha = head_sha(git_repo)
    subprocess.run(["git", "remote", "add", "origin", "https://ci:tok3n-secret@git.example.com/team/shop.git"],
                   cwd=git_repo, check=True)
    done = build(docker_ps)
    assert done.returncode == 0, done.stderr
    ref = f"127.0.0.1:5000/{app_name}/web:{sha[:12]}"
    assert "Step 1/" in done.stdout and f"built {ref}" in done.stdout  # the log streamed
    image = docker_client.images.get(ref)
    labels = image.labels
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.version"] == sha[:12]
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["org.opencontainers.image.source"] == "https://git.example.com/team/shop.git"
    assert f"BUILD_ID={sha[:12]}" in image.attrs["Config"]["Env"]
    echoed = docker_client.containers.run(ref, ["/bin/sh", "-c", "echo $BUILD_ID"], remove=True)
    assert echoed.decode().strip() == sha[:12]
    assert "tok3n-secret" not in done.stdout + done.stderr


def test_rebuild_is_skipped_and_force_rebuilds(docker_ps: Any, docker_client: Any, git_repo: Path,
                                               sample_project: dict[str, Any], app_name: str) -> None:
    first = build(docker_ps, "--json")
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)["images"][0]
    assert built["built"] is True and built["skipped"] is False
    again = build(docker_ps, "--json")
    assert again.returncode == 0, again.stderr
    skipped = json.loads(again.stdout)["images"][0]
    assert skipped["skipped"] is True and skipped["image_id"] == built["image_id"]
    assert "not rebuilding" in again.stderr and "Step 1/" not in again.stderr
    forced = build(docker_ps, "--json", "--force")
    rebuilt = json.loads(forced.stdout)["images"][0]
    assert rebuilt["built"] is True and "Step 1/" in forced.stderr
    assert rebuilt["image_id"] != built["image_id"]  # a new created label makes a new image


def test_json_output_is_one_object_with_the_log_on_stderr(
        docker_ps: Any, git_repo: Path, sample_project: dict[str, Any], app_name: str) -> None:
    done = docker_ps("--json", "build", "--build-arg", BASE_ARG)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    sha = head_sha(git_repo)
    assert record["step"] == "build" and record["ok"] is True
    assert record["build_id"] == sha[:12] and record["revision"] == sha
    assert record["images"][0]["image"] == f"127.0.0.1:5000/{app_name}/web:{sha[:12]}"
    assert record["images"][0]["image_id"].startswith("sha256:")
    assert "Step " in done.stderr


def test_dotenv_and_extra_tags(docker_ps: Any, docker_client: Any, git_repo: Path, project: Any,
                               app_name: str, base_image: str) -> None:
    project({"app": app_name, "registry": "127.0.0.1:5000/team",
             "services": {"web": {"context": "app", "slots": {"stable": 18081, "canary": 18082}},
                          "api-v2.x": {"context": "app", "slots": {"blue": 18091, "green": 18092}}}})
    done = build(docker_ps, "--tag", "latest", "--tag", "main", "--dotenv-out", "build.env")
    assert done.returncode == 0, done.stderr
    bid = head_sha(git_repo)[:12]
    assert (git_repo / "build.env").read_text() == (
        f"BUILD_ID={bid}\n"
        f"IMAGE_WEB=127.0.0.1:5000/team/{app_name}/web:{bid}\n"
        f"IMAGE_API_V2_X=127.0.0.1:5000/team/{app_name}/api-v2.x:{bid}\n")
    for service in ("web", "api-v2.x"):
        ids = {docker_client.images.get(f"127.0.0.1:5000/team/{app_name}/{service}:{t}").id
               for t in (bid, "latest", "main")}
        assert len(ids) == 1


def test_failing_dockerfile_exits_1_naming_the_instruction(docker_ps: Any, git_repo: Path,
                                                           sample_project: dict[str, Any]) -> None:
    dockerfile = git_repo / "app" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN echo about to fail && exit 7\n")
    done = build(docker_ps)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ps: build of service web failed at Step ")
    assert ": RUN echo about to fail && exit 7" in last and "returned a non-zero code: 7" in last
    assert "about to fail" in done.stdout  # the log tail streamed before the failure line
    assert "Traceback" not in done.stderr


def test_dirty_tree_gets_a_dirty_tag(docker_ps: Any, docker_client: Any, git_repo: Path,
                                     sample_project: dict[str, Any], app_name: str) -> None:
    handler = git_repo / "app" / "handler.sh"
    handler.write_text(handler.read_text() + "# local change\n")
    done = build(docker_ps, "--json")
    assert done.returncode == 0, done.stderr
    bid = head_sha(git_repo)[:12] + "-dirty"
    assert json.loads(done.stdout)["build_id"] == bid
    assert docker_client.images.get(f"127.0.0.1:5000/{app_name}/web:{bid}").labels[
        "org.opencontainers.image.version"] == bid
    again = build(docker_ps, "--json")  # a dirty tree may have changed since: always rebuilt
    assert json.loads(again.stdout)["images"][0]["built"] is True


@pytest.mark.parametrize("env", [
    {"GIT_COMMIT": SHA, "BUILD_NUMBER": "17", "GIT_BRANCH": "origin/develop",
     "BUILD_URL": "https://jenkins.example.com/job/shop/17/"},
    {"CI_COMMIT_SHA": SHA, "CI_COMMIT_BRANCH": "main", "CI_PIPELINE_URL": "https://gitlab.example.com/p/-/pipelines/3"},
], ids=["jenkins", "gitlab"])
def test_build_id_from_ci_variables(docker_ps: Any, docker_client: Any, git_repo: Path,
                                    sample_project: dict[str, Any], app_name: str,
                                    env: dict[str, str]) -> None:
    done = build(docker_ps, env=env)
    assert done.returncode == 0, done.stderr
    image = docker_client.images.get(f"127.0.0.1:5000/{app_name}/web:{SHA[:12]}")
    assert image.labels["org.opencontainers.image.revision"] == SHA


def test_build_id_option_overrides_the_context(docker_ps: Any, docker_client: Any, git_repo: Path,
                                               sample_project: dict[str, Any], app_name: str) -> None:
    done = build(docker_ps, "--build-id", "release-7")
    assert done.returncode == 0, done.stderr
    image = docker_client.images.get(f"127.0.0.1:5000/{app_name}/web:release-7")
    assert image.labels["org.opencontainers.image.revision"] == head_sha(git_repo)
    assert "BUILD_ID=release-7" in image.attrs["Config"]["Env"]


def test_dry_run_builds_nothing(docker_ps: Any, docker_client: Any, git_repo: Path,
                                sample_project: dict[str, Any], app_name: str) -> None:
    done = docker_ps("--dry-run", "build", "--build-arg", BASE_ARG, "--dotenv-out", "b.env")
    assert done.returncode == 0, done.stderr
    assert f"would build web as 127.0.0.1:5000/{app_name}/web:" in done.stdout
    assert not (git_repo / "b.env").exists()
    assert docker_client.images.list(filters={"label": f"pipeline-steps.app={app_name}"}) == []
