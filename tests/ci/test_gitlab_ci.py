""".gitlab-ci.yml and the shared template: GitLab's schema, their structure, and runs with gitlab-ci-local."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .cifiles import GITLAB_CI, GITLAB_PIPELINE, GITLAB_TEMPLATE, README, REPO, resolve
from .conftest import THREE_SERVICES, VENV_BIN, CiBed, running_builds, tool

# ---------------------------------------------------------------- GitLab's CI schema


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                           *map(str, paths)], capture_output=True, text=True, timeout=120, check=False)


def test_root_file_and_template_match_gitlab_schema() -> None:
    done = check_schema(GITLAB_CI, GITLAB_TEMPLATE, GITLAB_PIPELINE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_refuses_a_broken_file(tmp_path: Path) -> None:
    data = yaml.safe_load(GITLAB_CI.read_text())
    data["build"]["when"] = "sometimes"
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(yaml.safe_dump(data))
    assert check_schema(broken).returncode != 0


# ---------------------------------------------------------------- structure


def jobs(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    skip = ("variables", "workflow", "default")
    return {k: v for k, v in data.items() if isinstance(v, dict) and k not in skip}


def test_structure_rules_resource_group_dotenv_and_notify() -> None:
    root, template = jobs(GITLAB_CI), jobs(GITLAB_TEMPLATE)
    text = GITLAB_CI.read_text() + GITLAB_TEMPLATE.read_text()
    include = yaml.safe_load(GITLAB_CI.read_text())["include"]
    assert {"local": "shared/gitlab/ps-steps.gitlab-ci.yml"} in include
    for name, job in {**root, **template}.items():
        assert "only" not in job and "except" not in job, name
        assert "image" not in job, f"{name}: jobs run where ps is installed (shell executor)"
    assert all(name.startswith(".") for name in template), "the template only has hidden jobs"
    assert "\nimage:" not in text
    assert template[".ps-build"]["artifacts"]["reports"]["dotenv"] == "build.env"
    assert template[".ps-deploying"]["resource_group"]
    for hidden in (".ps-deploy-canary", ".ps-deploy-stable", ".ps-set-weights", ".ps-deploy", ".ps-rollback",
                   ".ps-promote-canary", ".ps-canary-auto-traffic"):
        extends = template[hidden]["extends"]
        assert ".ps-deploying" in ([extends] if isinstance(extends, str) else extends), hidden
    assert template[".ps-notify-success"]["when"] == "on_success"
    assert template[".ps-notify-failure"]["when"] == "on_failure"
    for manual in ("promote-canary", "rollback"):
        assert root[manual]["rules"][0]["when"] == "manual"
    workflow = yaml.safe_load(GITLAB_CI.read_text())["workflow"]["rules"]
    assert workflow[0] == {"if": '$CI_COMMIT_BRANCH == "develop"',
                           "variables": {"DEPLOY_TYPE": "canary-auto"}}
    assert workflow[1]["variables"] == {"DEPLOY_TYPE": "stable"}


def script_of(template: dict[str, dict[str, Any]], name: str) -> list[str]:
    return [*template[name].get("before_script", []), *template[name]["script"]]


def test_template_brings_stages_lease_environments_and_reports() -> None:
    """issue 15: stages come with the template; changing jobs begin the lease; .post ends it; reports kept."""
    data = yaml.safe_load(GITLAB_TEMPLATE.read_text())
    template = jobs(GITLAB_TEMPLATE)
    assert data["stages"] == ["build", "push", "deploy", "health", "traffic", "verify", "release"]
    assert "stages" not in yaml.safe_load(GITLAB_CI.read_text()), "the root file takes the template's stages"
    for name in (".ps-deploy-canary", ".ps-deploy-stable", ".ps-set-weights", ".ps-deploy",
                 ".ps-canary-auto-traffic"):
        assert script_of(template, name)[0].startswith("ps pipeline begin --deploy-type"), name
    for name, status in ((".ps-notify-success", "success"), (".ps-notify-failure", "failure")):
        assert template[name]["stage"] == ".post"
        assert template[name]["script"][0].startswith(f"ps pipeline end --status {status}"), name
        assert template[name]["extends"] == ".ps-pipeline-report"
    assert template[".ps-pipeline-report"]["artifacts"]["expose_as"]
    every = [line for name in template if "script" in template[name] for line in script_of(template, name)]
    assert not [line for line in every if line.startswith("ps mattermost-notify")], "only begin/end notify"
    assert "--service" not in " ".join(every), "every step works on all services"
    traffic = script_of(template, ".ps-canary-auto-traffic")[-1]
    assert "--type canary-auto --traffic-only" in traffic
    for name in (".ps-deploy-canary", ".ps-deploy-stable", ".ps-deploy", ".ps-promote-canary",
                 ".ps-rollback"):
        env = template[name]["environment"]
        assert env["name"] and env["url"] and env["deployment_tier"] == "production", name
    for name in (".ps-deploy", ".ps-promote-canary", ".ps-rollback", ".ps-canary-auto-traffic"):
        extends = template[name]["extends"]
        assert ".ps-report" in extends, name
    report = template[".ps-report"]["artifacts"]
    assert report["expose_as"] and report["when"] == "always"
    assert report["paths"] == ["ps-report.json", "ps-report.html"]


def test_pipeline_template_is_the_root_pipeline() -> None:
    """shared/gitlab/ps-pipeline.gitlab-ci.yml brings exactly the jobs and workflow of .gitlab-ci.yml."""
    root = yaml.safe_load(GITLAB_CI.read_text())
    brought = yaml.safe_load(GITLAB_PIPELINE.read_text())
    root.pop("include")
    assert brought == root


def readme_ci_section() -> str:
    text = README.read_text()
    return text[text.index("## CI files\n"):text.index("## Secrets\n")]


def readme_blocks(kind: str) -> list[str]:
    section = readme_ci_section()
    return [block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith(kind)]


def test_readme_ci_section_matches_the_files() -> None:
    section = readme_ci_section()
    stages = yaml.safe_load(GITLAB_TEMPLATE.read_text())["stages"]
    assert f"`{', '.join(stages)}`" in " ".join(section.split())
    for line in readme_blocks("sh")[0].splitlines():
        command = line.split("  #")[0].strip().replace("success|failure", "success")
        assert resolve(command, {"DEPLOY_TYPE": "stable"}).command.name, command
    project, vendored = (yaml.safe_load(block) for block in readme_blocks("yaml"))
    files = project["include"][0]["file"]
    assert [(REPO / f).exists() for f in files] == [True, True]
    assert [i["local"] for i in vendored["include"]] == files
    for name in ("ps pipeline begin", "--traffic-only", "expose_as", "publishHTML", "deployment_tier",
                 "parallel: matrix", "--ttl", "ps lock release --force"):
        assert name in section, name


def test_a_merge_into_develop_runs_the_push_pipeline(tmp_path: Path) -> None:
    """A merge request merged into develop: GitLab runs the merge commit's push pipeline (branch develop)."""
    repo = plain_repo(tmp_path, "develop")
    git = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
    subprocess.run([*git, "checkout", "-qb", "feature"], cwd=repo, check=True)
    (repo / "feature.txt").write_text("x\n")
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "feature"], cwd=repo, check=True)
    subprocess.run([*git, "checkout", "-q", "develop"], cwd=repo, check=True)
    subprocess.run([*git, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature' into 'develop'", "feature"],
                   cwd=repo, check=True)
    parents = subprocess.run(["git", "log", "-1", "--format=%P"], cwd=repo, check=True, capture_output=True,
                             text=True).stdout.split()
    assert len(parents) == 2  # a merge commit, as GitLab's merge button makes
    done = gitlab_ci_local(repo, "--list")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = listed_jobs(done.stdout)
    assert {"deploy:canary", "health:canary", "traffic:canary-auto"} <= set(listed), listed
    # the merge request's own pipeline (CI_PIPELINE_SOURCE=merge_request_event) has no CI_COMMIT_BRANCH:
    # no workflow rule but `when: never` matches it, so the merge deploys once, by its push pipeline
    rules = yaml.safe_load(GITLAB_CI.read_text())["workflow"]["rules"]
    assert all("CI_COMMIT_BRANCH" in rule["if"] for rule in rules[:-1]) and rules[-1] == {"when": "never"}


# ---------------------------------------------------------------- gitlab-ci-local


def gitlab_ci_local(repo: Path, *args: str, env: dict[str, str] | None = None,
                    timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """gitlab-ci-local in shell-executor mode, one job at a time, inside `repo`."""
    binary = tool("gitlab-ci-local")
    command = [str(binary), "--shell-executor-no-image", "--concurrency", "1",
               "--no-color", "--home", str(repo.parent / "gcl-home"), *args]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def plain_repo(tmp_path: Path, branch: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "shared" / "gitlab").mkdir(parents=True)
    (repo / ".gitlab-ci.yml").write_text(GITLAB_CI.read_text())
    (repo / "shared" / "gitlab" / GITLAB_TEMPLATE.name).write_text(GITLAB_TEMPLATE.read_text())
    git = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "ci"], cwd=repo, check=True)
    if branch != "main":
        subprocess.run([*git, "checkout", "-qb", branch], cwd=repo, check=True)
    return repo


def listed_jobs(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and not line.startswith(("parsing", "json", "name")):
            found[parts[0]] = parts[1]  # name, stage (the description column is empty)
    return found


@pytest.mark.parametrize("branch, present, absent", [
    ("develop",
     {"deploy:canary", "health:canary", "traffic:canary-auto", "verify:canary"},
     {"deploy:stable", "verify:stable"}),
    ("main", {"deploy:stable", "verify:stable"},
     {"deploy:canary", "traffic:canary-auto"}),
])
def test_rules_pick_the_jobs_per_branch(tmp_path: Path, branch: str, present: set[str],
                                        absent: set[str]) -> None:
    done = gitlab_ci_local(plain_repo(tmp_path, branch), "--list")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = listed_jobs(done.stdout)
    always = {"build", "push", "promote-canary", "rollback", "notify:success", "notify:failure"}
    assert present | always <= set(listed), listed
    assert not absent & set(listed), listed
    assert listed["promote-canary"] == "release" and listed["notify:failure"] == ".post"
    assert "notify:started" not in listed and "rollback:on-failure" not in listed  # issue 15: ps pipeline
    assert listed["deploy:canary" if branch == "develop" else "deploy:stable"] == "deploy"


def test_other_branches_run_no_pipeline() -> None:
    # gitlab-ci-local 4.73 does not drop a pipeline whose workflow rules all miss, so this is read here
    workflow = yaml.safe_load(GITLAB_CI.read_text())["workflow"]["rules"]
    assert workflow[-1] == {"when": "never"}
    assert [rule.get("if") for rule in workflow[:-1]] == ['$CI_COMMIT_BRANCH == "develop"',
                                                         "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"]


# ---------------------------------------------------------------- end to end on the test bed


def run_jobs(bed: CiBed, *jobs_: str, branch: str | None = None,
             pipeline: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run jobs (all of the pipeline when none named) with the CI secrets in the runner's environment.

    `pipeline` names the run (CI_PIPELINE_ID / CI_PIPELINE_URL), so a second gitlab-ci-local call can
    continue the same pipeline (its `.post` jobs after a failure, see below)."""
    if branch:
        current = bed.git("rev-parse", "--abbrev-ref", "HEAD")
        if current != branch:
            bed.git("checkout", "-q", "-B", branch)
    args: list[str] = []
    if pipeline is not None:
        args = ["--variable", f"CI_PIPELINE_ID={pipeline}",
                "--variable", f"CI_PIPELINE_URL=https://gitlab.example.com/ci/app/-/pipelines/{pipeline}"]
    done = gitlab_ci_local(bed.repo, *args, *jobs_, env=bed.env(**bed.secrets()))
    for secret in bed.secret_values():
        assert secret not in done.stdout + done.stderr, "a secret was printed"
    return done


def runs_on_failure(name: str) -> bool:
    """Whether GitLab runs job `name` of .gitlab-ci.yml (with the shared template's `extends:`) when an
    earlier job failed: `when: on_failure` on the job, a template it extends, or a rule of either."""
    jobs: dict[str, Any] = {}
    for path in (GITLAB_TEMPLATE, GITLAB_CI):
        jobs.update(yaml.safe_load(path.read_text()))

    def chain(job: str) -> list[dict[str, Any]]:
        body = jobs.get(job) or {}
        parents = body.get("extends") or []
        parents = [parents] if isinstance(parents, str) else parents
        return [body] + [b for parent in parents for b in chain(parent)]

    for body in chain(name):
        rules = [r for r in body.get("rules") or [] if isinstance(r, dict)]
        if body.get("when") == "on_failure" or any(r.get("when") == "on_failure" for r in rules):
            return True
    return False


def finish_failed_pipeline(bed: CiBed, pipeline: int) -> subprocess.CompletedProcess[str]:
    """GitLab now runs the pipeline's `when: on_failure` jobs. gitlab-ci-local 4.73 stops at the first
    later stage whose jobs do not run and never reaches them, so they run here as GitLab would: the same
    jobs of the same pipeline (same CI_PIPELINE_URL), with only their `when` lifted."""
    failure_jobs = ("notify:failure",)
    for job in failure_jobs:
        assert runs_on_failure(job), job
    lifted = yaml.safe_load((bed.repo / ".gitlab-ci.yml").read_text())
    for job in failure_jobs:
        lifted[job] = {**lifted[job], "rules": [{"when": "on_success"}]}
    (bed.repo / ".gitlab-ci.on-failure.yml").write_text(yaml.safe_dump(lifted, sort_keys=False))
    after = run_jobs(bed, "--file", ".gitlab-ci.on-failure.yml", *failure_jobs, pipeline=pipeline)
    assert after.returncode == 0, after.stdout[-6000:] + after.stderr[-2000:]
    assert "PASS  notify:failure" in after.stdout, after.stdout[-6000:]
    return after


def registry_has(bed: CiBed, tag: str) -> bool:
    answer = requests.head(f"http://{bed.registry.address}/v2/{bed.app}/web/manifests/{tag}",
                           auth=(bed.registry.user, bed.registry.password), timeout=10,
                           headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    return answer.status_code == 200


def of_pipeline(bed: CiBed, pipeline: int) -> list[dict[str, Any]]:
    url = f"https://gitlab.example.com/ci/app/-/pipelines/{pipeline}"
    return [e for e in bed.history() if e.get("pipeline_url") == url]


@pytest.mark.docker
@pytest.mark.slow
def test_build_and_push_jobs_pass_build_id_by_dotenv(ci_bed: CiBed) -> None:
    done = run_jobs(ci_bed, "build", "push", branch="develop")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    build_id = ci_bed.head()[:12]
    dotenv = dict(line.split("=", 1) for line in (ci_bed.repo / "build.env").read_text().split())
    assert dotenv["BUILD_ID"] == build_id
    assert dotenv["IMAGE_WEB"] == f"{ci_bed.registry.address}/{ci_bed.app}/web:{build_id}"
    assert registry_has(ci_bed, build_id)  # push used --build-id "$BUILD_ID" from the dotenv report
    assert ci_bed.endpoints.posts == []  # issue 15: nothing is said before the first changing stage


@pytest.mark.docker
@pytest.mark.slow
def test_build_failure_sends_one_failed_message_with_the_log_link(ci_bed: CiBed) -> None:
    dockerfile = ci_bed.repo / "app" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN exit 3\n")
    ci_bed.git("commit", "-qam", "broken build")
    done = run_jobs(ci_bed, branch="main", pipeline=11)
    assert done.returncode != 0 and "FAIL  build" in done.stdout, done.stdout[-6000:]
    assert ci_bed.endpoints.posts == []
    finish_failed_pipeline(ci_bed, 11)
    assert ci_bed.endpoints.sent() == ["failure"]
    text = ci_bed.endpoints.notified()[0]
    assert "open the log" in text and "/pipelines/11" in text and "stable" in text
    assert of_pipeline(ci_bed, 11) == [] and not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
def test_default_branch_pipeline_deploys_stable(ci_bed: CiBed) -> None:
    done = run_jobs(ci_bed, branch="main", pipeline=1)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    for job in ("build", "push", "deploy:stable", "verify:stable", "notify:success"):
        assert f"PASS  {job}" in done.stdout, job
    assert "notify:failure" not in done.stdout.split("PASS")[-1]
    assert set(ci_bed.through_nginx(20)) == {"stable"}
    # issue 15: one started and one outcome message; the lease ended; the history as `ps deploy` writes it
    assert ci_bed.endpoints.sent() == ["started", "success"]
    assert not ci_bed.leased()
    build = ci_bed.head()[:12]
    entries = of_pipeline(ci_bed, 1)
    # issue 9: the stable stage is `ps deploy --type stable`, through the canary slot (no request dropped)
    assert [e["type"] for e in entries] == ["stable"]
    stable = entries[-1]
    assert (stable["result"], stable["build_ids"], stable["weights"]) == \
        ("success", {"web/canary": build, "web/stable": build}, {"web": 0})
    assert (ci_bed.repo / "ps-pipeline.json").exists() and (ci_bed.repo / "ps-pipeline.html").exists()
    # the same type by `ps deploy` ends in the same state, history entry and messages
    env = ci_bed.env(**ci_bed.secrets(), CI_COMMIT_SHA=ci_bed.head(), CI_COMMIT_BRANCH="main",
                     CI_PIPELINE_URL="https://gitlab.example.com/ci/app/-/pipelines/2")
    direct = subprocess.run([str(VENV_BIN / "ps"), "deploy", "--type", "stable"], cwd=ci_bed.repo, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert direct.returncode == 0, direct.stdout[-4000:] + direct.stderr[-4000:]
    assert ci_bed.endpoints.sent() == ["started", "success"] * 2
    by_deploy = ci_bed.history()[-1]
    assert {k: by_deploy[k] for k in ("type", "result", "build_ids", "weights")} == \
        {k: stable[k] for k in ("type", "result", "build_ids", "weights")}
    assert set(ci_bed.through_nginx(20)) == {"stable"}


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("ci_bed", [THREE_SERVICES], indirect=True)
def test_one_pipeline_deploys_all_three_services(ci_bed: CiBed) -> None:
    done = run_jobs(ci_bed, branch="main", pipeline=1)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    build = ci_bed.head()[:12]
    # ps deploy --type stable goes through the canary slot: both slots run the new build
    assert running_builds(ci_bed) == {(name, slot): build for name in THREE_SERVICES
                                      for slot in ("stable", "canary")}
    stable = of_pipeline(ci_bed, 1)[-1]
    assert stable["type"] == "stable"
    assert stable["build_ids"] == {f"{n}/{slot}": build for n in THREE_SERVICES
                                   for slot in ("stable", "canary")}
    assert stable["weights"] == dict.fromkeys(THREE_SERVICES, 0)
    assert ci_bed.endpoints.sent() == ["started", "success"]
    assert "frontend, backend, python" in ci_bed.endpoints.notified()[0]
    assert set(ci_bed.through_nginx(10)) == {"stable"}


@pytest.mark.docker
@pytest.mark.slow
def test_develop_push_runs_canary_auto_to_the_end(ci_bed: CiBed) -> None:
    stable = run_jobs(ci_bed, branch="main", pipeline=1)
    assert stable.returncode == 0, stable.stdout[-6000:]
    ci_bed.git("checkout", "-q", "-b", "develop")
    ci_bed.commit_change("canary build")
    done = run_jobs(ci_bed, pipeline=2)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    for job in ("deploy:canary", "health:canary", "traffic:canary-auto", "verify:canary", "notify:success"):
        assert f"PASS  {job}" in done.stdout, job
    slots = ci_bed.through_nginx(100)
    assert 60 <= slots.count("canary") <= 80, slots  # ends at the last step (70 %) waiting for promote
    assert ci_bed.endpoints.sent() == ["started", "success"] * 2
    assert "canary 70% / stable 30%" in ci_bed.endpoints.notified()[-1]
    # deployed and gated once: the traffic job only ran the traffic phase
    traffic = done.stdout[done.stdout.index("traffic:canary-auto"):]
    assert "traffic only: the canary of web runs" in traffic
    assert "deploying" not in traffic.split("PASS  traffic:canary-auto")[0]
    entries = of_pipeline(ci_bed, 2)
    build = ci_bed.head()[:12]
    assert [e["type"] for e in entries] == ["set-weights", "deploy-env", "canary-auto"]
    auto = entries[-1]
    assert (auto["result"], auto["build_ids"], auto["weights"]) == ("success", {"web/canary": build},
                                                                    {"web": 70})
    assert not ci_bed.leased()
    assert (ci_bed.repo / "ps-report.json").exists()
    # the manual jobs, later: runs of their own (`ps deploy` with its lock, history and two messages)
    for number, job in ((3, "promote-canary"), (4, "rollback")):
        manual = run_jobs(ci_bed, job, pipeline=number)
        assert manual.returncode == 0 and f"PASS  {job}" in manual.stdout, manual.stdout[-6000:]
        assert [e["type"] for e in of_pipeline(ci_bed, number)] == [job]
        assert of_pipeline(ci_bed, number)[0]["result"] == "success"
    assert ci_bed.endpoints.sent() == ["started", "success"] * 4
    assert set(ci_bed.through_nginx(20)) == {"stable"}
    assert of_pipeline(ci_bed, 3)[0]["build_ids"]["web/stable"] == build


@pytest.mark.docker
@pytest.mark.slow
def test_canary_failing_its_gate_is_rolled_back_and_notified(ci_bed: CiBed) -> None:
    stable = run_jobs(ci_bed, branch="main", pipeline=1)
    assert stable.returncode == 0, stable.stdout[-6000:]
    ci_bed.git("checkout", "-q", "-b", "develop")
    ci_bed.commit_change("broken canary", app_sh_line="touch /tmp/unhealthy")
    done = run_jobs(ci_bed, pipeline=2)
    assert done.returncode != 0
    assert "FAIL  health:canary" in done.stdout, done.stdout[-6000:]
    assert ci_bed.leased()  # the pipeline holds the lock until its end
    by_hand = subprocess.run([str(VENV_BIN / "ps"), "set-weights", "--canary", "50"], cwd=ci_bed.repo,
                             env=ci_bed.env(), capture_output=True, text=True, timeout=120, check=False)
    assert by_hand.returncode == 1 and "/pipelines/2" in by_hand.stderr, by_hand.stderr
    finish_failed_pipeline(ci_bed, 2)
    assert set(ci_bed.through_nginx(20)) == {"stable"}
    assert ci_bed.endpoints.sent() == ["started", "success", "started", "rolled-back"]
    entries = of_pipeline(ci_bed, 2)
    assert [e["type"] for e in entries] == ["set-weights", "deploy-env", "canary-auto"]
    assert entries[-1]["result"] == "rolled-back" and entries[-1]["weights"] == {"web": 0}
    assert not ci_bed.leased()


def test_repo_root_has_no_gitlab_ci_local_state() -> None:
    assert not (REPO / ".gitlab-ci-local").exists(), "gitlab-ci-local must run in temporary projects only"


@pytest.mark.docker
@pytest.mark.slow
def test_fresh_repository_adopts_the_template_with_the_readme_lines(ci_bed: CiBed, tmp_path: Path) -> None:
    """A new project (git init, a remote with HEAD set): ps.yaml, shared/gitlab/ and only the README's
    .gitlab-ci.yml lines. Its default branch deploys stable like this repository's pipeline does."""
    repo = ci_bed.repo
    vendored = readme_blocks("yaml")[1]
    (repo / ".gitlab-ci.yml").write_text(vendored)
    for path in (GITLAB_TEMPLATE, GITLAB_PIPELINE):
        (repo / "shared" / "gitlab" / path.name).write_text(path.read_text())
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    ci_bed.git("add", "-A")
    ci_bed.git("commit", "-qm", "adopt pipeline-steps")
    ci_bed.git("remote", "add", "origin", str(remote))
    ci_bed.git("push", "-q", "origin", "main")
    ci_bed.git("remote", "set-head", "origin", "main")
    done = run_jobs(ci_bed, branch="main", pipeline=5)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    for job in ("build", "push", "deploy:stable", "verify:stable", "notify:success"):
        assert f"PASS  {job}" in done.stdout, job
    assert "not found" not in done.stdout + done.stderr and "HEAD" not in done.stderr, done.stderr[-2000:]
    assert ci_bed.endpoints.sent() == ["started", "success"]
    assert of_pipeline(ci_bed, 5)[-1]["type"] == "stable"
    assert set(ci_bed.through_nginx(10)) == {"stable"}
