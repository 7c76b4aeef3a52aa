"""The Jenkinsfile and the shared Jenkins library: linted, evaluated with a DSL stub, and run on the bed."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

from .cifiles import JENKINS_VARS, JENKINSFILE, REPO, resolve
from .conftest import THREE_SERVICES, CiBed, running_builds, tool

TYPES = ("stable", "canary-manual", "canary-auto", "promote-canary", "rollback", "blue-green")
DEPLOYING = ("ps deploy-env", "ps set-weights", "ps deploy ", "ps switch")


def sh_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in plan["steps"] if s["kind"] == "sh"]


def ran(plan: dict[str, Any]) -> list[str]:
    return [s["name"] for s in plan["stages"] if s["ran"]]


# ---------------------------------------------------------------- lint


@pytest.mark.slow
def test_npm_groovy_lint_passes() -> None:
    lint = tool("npm-groovy-lint")
    files = [str(JENKINSFILE), *sorted(str(p) for p in JENKINS_VARS.glob("*.groovy"))]
    done = subprocess.run([str(lint), "--noserver", "--failon", "warning", "--loglevel", "warning",
                           "--config", str(REPO / ".groovylintrc.json"), *files],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 error(s)" in done.stdout or "Error" in done.stdout


def test_groovylintrc_uses_the_jenkinsfile_rules() -> None:
    import json

    assert json.loads((REPO / ".groovylintrc.json").read_text())["extends"] == "recommended-jenkinsfile"


# ---------------------------------------------------------------- structure, per DEPLOY_TYPE


def test_parameters_and_trigger(jenkins_plans: dict[str, Any]) -> None:
    params = {p["name"]: p for p in jenkins_plans["parameters"]}
    assert set(params["DEPLOY_TYPE"]["choices"]) == set(TYPES)
    # a GitLab push trigger starts the job with defaults: the default type is canary-auto
    assert params["DEPLOY_TYPE"]["default"] == "canary-auto"
    assert params["CANARY_WEIGHT"]["kind"] == "string"
    gitlab = [t for t in jenkins_plans["triggers"] if t["name"] == "gitlab"]
    assert gitlab and gitlab[0]["args"][0]["includeBranchesSpec"] == "develop"
    assert any(o["name"] == "timeout" for o in jenkins_plans["options"])


def test_every_type_runs_checkout_and_only_ps_steps(jenkins_plans: dict[str, Any]) -> None:
    assert set(jenkins_plans["runs"]) == set(TYPES)
    for deploy_type, plan in jenkins_plans["runs"].items():
        kinds = {s["kind"] for s in plan["steps"]}
        assert kinds <= {"sh", "checkout"}, (deploy_type, kinds)
        assert ran(plan)[0] == "Checkout"
        assert plan["environment"]["DEPLOY_TYPE"] == deploy_type
        for step in sh_steps(plan):
            assert step["command"].startswith("ps "), step
            resolve(step["command"], {k: str(v) for k, v in step["env"].items()} | {"BUILD_URL": "http://x/1/"})


# issue 15: every type begins by leasing the deploy lock ('Begin deploy'); canary-auto's traffic stage
# runs only the traffic phase on the canary the stages before deployed and gated
@pytest.mark.parametrize("deploy_type, stages", [
    ("stable", ["Build", "Push", "Begin deploy", "Deploy stable slot", "Verify weights stable"]),
    ("canary-manual", ["Build", "Push", "Begin deploy", "Deploy canary slot", "Health gate canary",
                       "Traffic to canary", "Verify weights canary"]),
    ("canary-auto", ["Build", "Push", "Begin deploy", "Deploy canary slot", "Health gate canary",
                     "Traffic canary-auto", "Verify weights"]),
    ("promote-canary", ["Approve promote", "Begin deploy", "Traffic by ps deploy", "Verify weights"]),
    ("rollback", ["Begin deploy", "Traffic by ps deploy", "Verify weights"]),
    ("blue-green", ["Build", "Push", "Begin deploy", "Traffic by ps deploy", "Verify weights"]),
])
def test_stages_each_type_runs(jenkins_plans: dict[str, Any], deploy_type: str, stages: list[str]) -> None:
    plan = jenkins_plans["runs"][deploy_type]
    ran_stages = [s for s in ran(plan) if s not in ("Checkout", "Deploy")]
    assert ran_stages == stages


def test_health_gate_retries_and_deploy_type_passed_to_ps_deploy(jenkins_plans: dict[str, Any]) -> None:
    for deploy_type, plan in jenkins_plans["runs"].items():
        for step in sh_steps(plan):
            command = step["command"]
            if command.startswith("ps health-gate"):
                assert "--retries 30" in command
            if command.startswith("ps deploy "):  # issue 15: canary-auto runs only its traffic phase
                assert '--type "$DEPLOY_TYPE"' in command or (
                    deploy_type == "canary-auto" and "--type canary-auto --traffic-only" in command)


def test_deploying_steps_hold_the_lock_and_timeouts(jenkins_plans: dict[str, Any]) -> None:
    for deploy_type, plan in jenkins_plans["runs"].items():
        for step in sh_steps(plan):
            if step["command"].startswith(DEPLOYING):
                assert step["locks"] == ["ps-deploy-sample-app"], (deploy_type, step["command"])
                assert step["timeouts"], (deploy_type, step["command"])


def test_credentials_bound_where_needed(jenkins_plans: dict[str, Any]) -> None:
    for deploy_type, plan in jenkins_plans["runs"].items():
        post = [s for steps in plan["post"].values() for s in steps if s["kind"] == "sh"]
        for step in sh_steps(plan) + post:
            bound = {v for c in step["credentials"] for v in c["variables"]}
            command = step["command"]
            if command.startswith(("ps push", "ps deploy-env", "ps deploy ")):
                assert {"REGISTRY_USER", "REGISTRY_PASSWORD"} <= bound, (deploy_type, command)
            if command.startswith(("ps mattermost-notify", "ps deploy ", "ps pipeline")):
                assert "MATTERMOST_WEBHOOK_URL" in bound, (deploy_type, command)
            if command.startswith("ps gitlab-status"):
                assert "GITLAB_TOKEN" in bound, (deploy_type, command)


def test_promote_asks_first_unless_told_not_to(groovy: Any, jenkins_plans: dict[str, Any]) -> None:
    stages = {s["name"]: s for s in jenkins_plans["runs"]["promote-canary"]["stages"]}
    approve = stages["Approve promote"]
    assert approve["ran"] and approve["input"][0]["name"] == "message"
    assert approve["timeouts"]
    assert not {s["name"]: s for s in jenkins_plans["runs"]["stable"]["stages"]}["Approve promote"]["ran"]
    plans = groovy(str(JENKINSFILE), "promote-canary", "CONFIRM_PROMOTE=false")
    unconfirmed = plans["runs"]["promote-canary"]
    assert "Approve promote" not in ran(unconfirmed)
    assert "Traffic by ps deploy" in ran(unconfirmed)


def test_post_notifies_every_outcome(jenkins_plans: dict[str, Any]) -> None:
    # issue 15: `ps pipeline end` sends the one outcome message (and ends the lease)
    post = jenkins_plans["runs"]["stable"]["post"]
    for outcome, status, state in (("success", "success", "success"), ("failure", "failure", "failed"),
                                   ("aborted", "failure", "canceled")):
        commands = [s["command"] for s in post[outcome]]
        assert any(c.startswith(f"ps pipeline end --status {status}") for c in commands), outcome
        assert f"ps gitlab-status --state {state}" in commands
    cleanup = post["cleanup"]
    assert cleanup[0]["kind"] == "archiveArtifacts" and "ps-pipeline.*" in cleanup[0]["command"]
    assert any(s["kind"] == "unknown" and s["command"] == "publishHTML" for s in cleanup)


def test_only_begin_and_end_notify(jenkins_plans: dict[str, Any]) -> None:
    for deploy_type, plan in jenkins_plans["runs"].items():
        post = [s for steps in plan["post"].values() for s in steps if s["kind"] == "sh"]
        commands = [s["command"] for s in sh_steps(plan) + post]
        assert not [c for c in commands if c.startswith("ps mattermost-notify")], deploy_type
        begins = [i for i, c in enumerate(commands) if c.startswith("ps pipeline begin")]
        changing = [i for i, c in enumerate(commands) if c.startswith(DEPLOYING)]
        assert len(begins) == 1 and changing and begins[0] < changing[0], deploy_type
        assert "--service" not in " ".join(commands), "every step works on all services"


# ---------------------------------------------------------------- the shared library


@pytest.mark.parametrize("call, expected", [
    (["psBuild", "service=web"], ['ps build --service "$SERVICE" --dotenv-out build.env',
                                  'ps push --service "$SERVICE"']),
    (["psDeployEnv", "slot=canary"], ['ps set-weights --canary 0 --service "$SERVICE"',
                                      'ps deploy-env --slot "$SLOT" --service "$SERVICE"',
                                      'ps health-gate --service "$SERVICE" --slot "$SLOT" '
                                      '--retries "$HEALTH_RETRIES"']),
    (["psDeployEnv", "slot=stable", "force=true"], ['ps deploy-env --slot "$SLOT" --service "$SERVICE"',
                                                    'ps health-gate --service "$SERVICE" --slot "$SLOT" '
                                                    '--retries "$HEALTH_RETRIES"']),
    (["psTraffic", "canary=40"], ['ps set-weights --canary "$CANARY_WEIGHT" --service "$SERVICE"',
                                  'ps verify-weights --expect-canary "$CANARY_WEIGHT" --service "$SERVICE"']),
    (["psDeploy", "type=canary-manual", "weight=25"],
     ['ps deploy --type "$DEPLOY_TYPE" --service "$SERVICE" --report ps-report.json']),
    (["psPipeline", "begin=true", "type=stable"],
     ['ps pipeline begin --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"']),
    (["psPipeline", "status=failure"],
     ['ps pipeline end --status "$PIPELINE_STATUS" --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"']),
    (["psNotify", "status=failure", "message=boom"],
     ['ps mattermost-notify --status "$NOTIFY_STATUS" --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"',
      'ps gitlab-status --state "$GITLAB_STATE"']),
])
def test_library_globals_wrap_ps_steps(groovy: Any, call: list[str], expected: list[str]) -> None:
    result = groovy("--library", str(JENKINS_VARS), "--call", *call)
    steps = [s for s in result["steps"] if s["kind"] == "sh"]
    assert [s["command"] for s in steps] == expected
    for step in steps:
        assert {c["id"] for c in step["credentials"]} == {"registry", "mattermost-webhook", "gitlab-token"}
        env = {k: str(v) for k, v in step["env"].items()}
        ctx = resolve(step["command"], {"LOG_URL": "http://x/1/", **env})
        assert ctx.command.name
    env = steps[0]["env"]
    if call[0] == "psDeployEnv":
        assert env["SLOT"] == call[1].split("=")[1]
        assert env["PS_DEPLOY_ENV_FORCE"] == ("true" if "force=true" in call else "false")
    if call[0] == "psDeploy":
        assert env["DEPLOY_TYPE"] == "canary-manual" and env["PS_DEPLOY_WEIGHT"] == "25"
    if call[0] == "psPipeline":
        assert env["PIPELINE_STATUS"] == ("failure" if "status=failure" in call else "success")
        assert env["DEPLOY_TYPE"] == ("stable" if "type=stable" in call else "canary-auto")
        assert env["PS_PIPELINE_END_REPORT_PATH"] == "ps-pipeline.json"
    if call[0] == "psNotify":
        assert env["GITLAB_STATE"] == "failed" and env["PS_MATTERMOST_NOTIFY_MESSAGE"] == "boom"


# ---------------------------------------------------------------- run on the test bed


@dataclass
class JenkinsRun:
    """What the recorded steps did when run like Jenkins' `sh` would."""

    outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    failed: str | None = None
    outcome: str = "success"

    def text(self) -> str:
        return "\n".join(f"$ {cmd}\n{p.stdout}{p.stderr}" for cmd, p in self.outputs)


def run_plan(bed: CiBed, plan: dict[str, Any], build_number: int) -> JenkinsRun:
    """Run every recorded `sh` step in order in the bed's checkout, then the matching `post` block."""
    secrets = bed.secrets()
    base = bed.env(GIT_COMMIT=bed.head(), GIT_BRANCH="origin/main", BUILD_NUMBER=str(build_number),
                   BUILD_ID=str(build_number),  # Jenkins' own BUILD_ID: the build number, not ours
                   BUILD_TAG=f"jenkins-sample-app-{build_number}",
                   JOB_NAME="sample-app", JENKINS_URL="http://127.0.0.1:9/",
                   BUILD_URL=f"http://127.0.0.1:9/job/sample-app/{build_number}/")
    result = JenkinsRun()

    def run(step: dict[str, Any]) -> bool:
        env = {**base, **{k: str(v) for k, v in step["env"].items()}, "GITLAB_URL": bed.endpoints.base}
        for binding in step["credentials"]:
            for variable in binding["variables"]:
                env[variable] = secrets[variable]
        done = subprocess.run(["bash", "-ec", step["command"]], cwd=bed.repo, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        result.outputs.append((step["command"], done))
        return done.returncode == 0

    for step in plan["steps"]:
        if step["kind"] == "sh" and not run(step):
            result.failed, result.outcome = step["command"], "failure"
            break
    for step in plan["post"].get(result.outcome, []):
        if step["kind"] == "sh":
            run(step)
    for secret in bed.secret_values():
        assert secret not in result.text(), "a secret was printed"
    return result


def of_build(bed: CiBed, build_number: int) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:9/job/sample-app/{build_number}/"
    return [e for e in bed.history() if e.get("pipeline_url") == url]


@pytest.mark.docker
@pytest.mark.slow
def test_jenkinsfile_stable_then_canary_manual_on_the_bed(ci_bed: CiBed,
                                                          jenkins_plans: dict[str, Any]) -> None:
    stable = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert stable.failed is None, stable.text()[-6000:]
    first = ci_bed.head()[:12]
    assert set(ci_bed.through_nginx(20)) == {"stable"}

    ci_bed.commit_change("second build")
    canary = run_plan(ci_bed, jenkins_plans["runs"]["canary-manual"], 2)
    assert canary.failed is None, canary.text()[-6000:]
    second = ci_bed.head()[:12]
    assert second != first
    slots = ci_bed.through_nginx(100)
    assert 4 <= slots.count("canary") <= 16, slots  # 10 % with smooth weighted round robin

    import docker

    client = docker.DockerClient(base_url=ci_bed.docker_host)
    try:
        labels = {c.name: c.labels for c in client.containers.list(filters={"name": ci_bed.app})}
    finally:
        client.close()
    by_slot = {lbl.get("pipeline-steps.slot"): lbl.get("pipeline-steps.build-id") for lbl in labels.values()}
    assert by_slot == {"stable": first, "canary": second}
    by_slot_builds = running_builds(ci_bed)

    # issue 15: exactly two messages per build (started at the first changing stage, the outcome in post)
    assert ci_bed.endpoints.sent() == ["started", "success", "started", "success"]
    assert "canary 10% / stable 90%" in ci_bed.endpoints.notified()[-1]
    states = [s.get("state") for s in ci_bed.endpoints.statuses]
    assert states == ["running", "success", "running", "success"]
    assert ci_bed.endpoints.statuses[-1]["path"].endswith(ci_bed.head())
    # the history as `ps deploy` writes it, for each type; the lease ended
    assert [e["type"] for e in of_build(ci_bed, 1)] == ["stable"]  # ps deploy: through the canary
    assert of_build(ci_bed, 1)[-1]["build_ids"] == {"web/canary": first, "web/stable": first}
    manual = of_build(ci_bed, 2)
    assert [e["type"] for e in manual] == ["set-weights", "deploy-env", "set-weights", "canary-manual"]
    assert (manual[-1]["result"], manual[-1]["build_ids"], manual[-1]["weights"]) == \
        ("success", {"web/canary": second}, {"web": 10})
    assert not ci_bed.leased()
    assert (ci_bed.repo / "ps-pipeline.json").exists()
    # the same type by `ps deploy`: the same state, history entry and messages
    direct = subprocess.run(["ps", "deploy", "--type", "canary-manual", "--weight", "10"], cwd=ci_bed.repo,
                            env=ci_bed.env(**ci_bed.secrets(), GIT_COMMIT=ci_bed.head(), BUILD_NUMBER="3",
                                           BUILD_URL="http://127.0.0.1:9/job/sample-app/3/"),
                            capture_output=True, text=True, timeout=600, check=False)
    assert direct.returncode == 0, direct.stdout[-4000:] + direct.stderr[-4000:]
    by_deploy = of_build(ci_bed, 3)[-1]
    assert {k: by_deploy[k] for k in ("type", "result", "build_ids", "weights")} == \
        {k: manual[-1][k] for k in ("type", "result", "build_ids", "weights")}
    assert ci_bed.endpoints.sent() == ["started", "success"] * 3
    assert running_builds(ci_bed) == by_slot_builds


@pytest.mark.docker
@pytest.mark.slow
def test_jenkinsfile_failing_gate_notifies_failure(ci_bed: CiBed, jenkins_plans: dict[str, Any]) -> None:
    stable = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert stable.failed is None, stable.text()[-6000:]
    ci_bed.commit_change("broken canary", app_sh_line="touch /tmp/unhealthy")
    canary = run_plan(ci_bed, jenkins_plans["runs"]["canary-manual"], 2)
    assert canary.failed is not None and canary.failed.startswith("ps health-gate"), canary.text()[-4000:]
    assert set(ci_bed.through_nginx(20)) == {"stable"}  # the canary never got its weight
    # issue 15: as `ps deploy --type canary-manual` reports a canary failing its gate: rolled back
    assert ci_bed.endpoints.sent() == ["started", "success", "started", "rolled-back"]
    assert "open the log" in ci_bed.endpoints.notified()[-1]
    assert ci_bed.endpoints.statuses[-1].get("state") == "failed"
    assert of_build(ci_bed, 2)[-1]["type"] == "canary-manual"
    assert of_build(ci_bed, 2)[-1]["result"] == "rolled-back"
    assert not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
def test_jenkinsfile_canary_auto_then_promote_on_the_bed(ci_bed: CiBed,
                                                         jenkins_plans: dict[str, Any]) -> None:
    stable = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert stable.failed is None, stable.text()[-6000:]
    ci_bed.commit_change("canary build")
    auto = run_plan(ci_bed, jenkins_plans["runs"]["canary-auto"], 2)
    assert auto.failed is None, auto.text()[-6000:]
    slots = ci_bed.through_nginx(100)
    assert 60 <= slots.count("canary") <= 80, slots  # canary-auto ends at its last step, 70 %
    assert (ci_bed.repo / "ps-report.json").exists()
    # deployed and gated once, by the stages; `ps deploy --traffic-only` ran only the traffic phase
    traffic = next(p for cmd, p in auto.outputs if "--traffic-only" in cmd)
    assert "traffic only: the canary of web runs" in traffic.stdout + traffic.stderr
    assert [e["type"] for e in of_build(ci_bed, 2)] == ["set-weights", "deploy-env", "canary-auto"]

    promote = run_plan(ci_bed, jenkins_plans["runs"]["promote-canary"], 3)
    assert promote.failed is None, promote.text()[-6000:]
    assert ci_bed.through_nginx(20).count("stable") == 20
    assert ci_bed.endpoints.sent() == ["started", "success"] * 3
    assert [e["type"] for e in of_build(ci_bed, 3)] == ["promote-canary"]
    assert of_build(ci_bed, 3)[-1]["build_ids"]["web/stable"] == ci_bed.head()[:12]
    assert not ci_bed.leased()

    rollback = run_plan(ci_bed, jenkins_plans["runs"]["rollback"], 4)
    assert rollback.failed is None, rollback.text()[-6000:]
    assert [e["type"] for e in of_build(ci_bed, 4)] == ["rollback"]
    assert ci_bed.endpoints.sent() == ["started", "success"] * 4
    assert not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
def test_jenkinsfile_build_failure_sends_one_failed_message(ci_bed: CiBed,
                                                            jenkins_plans: dict[str, Any]) -> None:
    dockerfile = ci_bed.repo / "app" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN exit 3\n")
    ci_bed.git("commit", "-qam", "broken build")
    run = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert run.failed is not None and run.failed.startswith("ps build"), run.text()[-4000:]
    assert ci_bed.endpoints.sent() == ["failure"]
    assert "open the log" in ci_bed.endpoints.notified()[0]
    assert "http://127.0.0.1:9/job/sample-app/1/" in ci_bed.endpoints.notified()[0]
    assert of_build(ci_bed, 1) == [] and not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("ci_bed", [THREE_SERVICES], indirect=True)
def test_jenkinsfile_canary_manual_deploys_all_three_services(ci_bed: CiBed,
                                                              jenkins_plans: dict[str, Any]) -> None:
    stable = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert stable.failed is None, stable.text()[-6000:]
    first = ci_bed.head()[:12]
    ci_bed.commit_change("second build")
    canary = run_plan(ci_bed, jenkins_plans["runs"]["canary-manual"], 2)
    assert canary.failed is None, canary.text()[-6000:]
    second = ci_bed.head()[:12]
    assert running_builds(ci_bed) == {**{(n, "stable"): first for n in THREE_SERVICES},
                                      **{(n, "canary"): second for n in THREE_SERVICES}}
    manual = of_build(ci_bed, 2)[-1]
    assert manual["type"] == "canary-manual"
    assert manual["build_ids"] == {f"{n}/canary": second for n in THREE_SERVICES}
    assert manual["weights"] == dict.fromkeys(THREE_SERVICES, 10)
    assert ci_bed.endpoints.sent() == ["started", "success"] * 2


@pytest.mark.docker
@pytest.mark.slow
def test_jenkinsfile_canary_auto_rolled_back_in_its_traffic_phase(ci_bed: CiBed,
                                                                 jenkins_plans: dict[str, Any]) -> None:
    import threading
    import time

    import docker

    stable = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert stable.failed is None, stable.text()[-6000:]
    ci_bed.commit_change("canary that fails under traffic")
    runs: list[JenkinsRun] = []
    plan = jenkins_plans["runs"]["canary-auto"]
    worker = threading.Thread(target=lambda: runs.append(run_plan(ci_bed, plan, 2)))
    worker.start()
    deadline = time.monotonic() + 240
    new_build = ci_bed.head()[:12]
    # the traffic phase gave the new canary its first step (the stable deploy left the canary slot
    # running the old build at the minimum weight: that one must not count)
    while running_builds(ci_bed).get(("web", "canary")) != new_build or \
            "canary" not in ci_bed.through_nginx(10):
        assert worker.is_alive() and time.monotonic() < deadline, "the canary never got traffic"
    client = docker.DockerClient(base_url=ci_bed.docker_host)
    try:
        client.containers.get(f"{ci_bed.app}-web-canary").exec_run(["touch", "/tmp/unhealthy"])
    finally:
        client.close()
    worker.join(timeout=300)
    auto = runs[0]
    assert auto.failed is not None and "--traffic-only" in auto.failed, auto.text()[-4000:]
    assert set(ci_bed.through_nginx(20)) == {"stable"}
    # one started, one rolled back: ps deploy inside the leased pipeline sent nothing itself
    assert ci_bed.endpoints.sent() == ["started", "success", "started", "rolled-back"]
    entries = of_build(ci_bed, 2)
    assert [e["type"] for e in entries] == ["set-weights", "deploy-env", "canary-auto"]
    assert entries[-1]["result"] == "rolled-back"
    assert not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("ci_bed", [{"web": "blue-green"}], indirect=True)
def test_jenkinsfile_blue_green_twice_on_the_bed(ci_bed: CiBed, jenkins_plans: dict[str, Any]) -> None:
    first = run_plan(ci_bed, jenkins_plans["runs"]["blue-green"], 1)
    assert first.failed is None, first.text()[-6000:]
    one = ci_bed.through_nginx(10)
    assert len(set(one)) == 1 and set(one) <= {"blue", "green"}
    ci_bed.commit_change("second color")
    second = run_plan(ci_bed, jenkins_plans["runs"]["blue-green"], 2)
    assert second.failed is None, second.text()[-6000:]
    two = set(ci_bed.through_nginx(10))
    assert len(two) == 1 and two != set(one)
    assert running_builds(ci_bed)[("web", two.pop())] == ci_bed.head()[:12]
    assert ci_bed.endpoints.sent() == ["started", "success"] * 2
    for build in (1, 2):  # `ps deploy --type blue-green` inside the leased build: its own entry only
        assert [e["type"] for e in of_build(ci_bed, build)] == ["blue-green"]
        assert of_build(ci_bed, build)[0]["result"] == "success"
    assert not ci_bed.leased()


@pytest.mark.docker
@pytest.mark.slow
def test_rollback_to_previous_finds_the_stable_build_ci_deployed(ci_bed: CiBed,
                                                                 jenkins_plans: dict[str, Any]) -> None:
    first = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 1)
    assert first.failed is None, first.text()[-6000:]
    old = ci_bed.head()[:12]
    ci_bed.commit_change("next stable")
    second = run_plan(ci_bed, jenkins_plans["runs"]["stable"], 2)
    assert second.failed is None, second.text()[-6000:]
    done = subprocess.run(["ps", "deploy", "--type", "rollback", "--to", "previous"], cwd=ci_bed.repo,
                          env=ci_bed.env(**ci_bed.secrets()), capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"web: previous stable build {old} (history" in done.stdout + done.stderr
    assert running_builds(ci_bed)[("web", "stable")] == old
