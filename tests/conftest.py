"""Test bed fixtures: real Docker engine, registry and nginx, all on this run's own loopback address.

The session claims a pair of addresses in 127.0.0.0/8 at configure time (testbed.ports.address();
exported in PS_TEST_ADDRESS / PS_TEST_ADDRESS2 for the run's subprocesses), so parallel runs never share a
port. Under pytest-xdist every worker claims its own pair and the controller none; the workers share one
Docker engine (testbed.engine.run_engine), stopped once by the top process at the end.
Everything started here has unique names and ports of that address, and is cleaned up.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline_steps.adapters.key_probe import SEED_ENV as PROBE_SEED  # noqa: E402
from testbed import images  # noqa: E402
from testbed.engine import Engine, begin_run, run_engine, stop_run_engine  # noqa: E402
from testbed.nginx import Nginx, start_nginx  # noqa: E402
from testbed.ports import ENV, ENV2, address, forget_inherited, free_port, unique, wait_port  # noqa: E402
from testbed.registry import Registry, start_registry  # noqa: E402

SAMPLE_BUILD_ID = "5a3e1e000001"
if os.environ.get("PYTEST_XDIST_WORKER"):
    forget_inherited()  # a pair the controller drew is not this worker's: it claims its own
begin_run()  # the top process names the run; xdist workers inherit the name (one engine for all)
# the keys of a sticky split's probe are random: each measure would fail a right split 1 % of the time, and
# the suite has several. A fixed seed makes every probe's keys, and so each verdict, the same in every run.
os.environ.setdefault(PROBE_SEED, "ps-test-bed")


def pytest_configure(config: pytest.Config) -> None:
    """Claim the run's address now (every fixture and subprocess of the session uses it), except in an
    xdist controller: it runs no test, and its workers claim their own."""
    if not (getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")):
        address()


# `make test` runs the suite in two parts: every test not marked `serial` in pytest-xdist workers
# (`-n 4 --dist loadgroup -m "not serial"`), then the `serial` ones in one process, alone, as before xdist:
# they measure time (a rollback within check_interval + one reload + 1 s, a request deadline, a latency
# decision) or drive load with 0 failed requests, and the other workers' load would break their margins.
SERIAL = (
    "tests/integration/test_core_promise.py::",
    "tests/integration/test_load.py::",
    "tests/integration/test_keepalive_load.py::",
    "tests/integration/test_analysis_nginx.py::",
    "tests/integration/test_deploy_types.py::test_canary_auto_rolls_back_a_canary_that_turns_unhealthy",
    # deploys under load that must fail 0 requests (two suites at once starved them: timeouts)
    "tests/integration/test_deploy_types.py::test_canary_auto_promote_rollback_drop_no_request",
    "tests/integration/test_deploy_types.py::test_blue_green_switches_without_dropping_requests",
    "tests/integration/test_deploy_types.py::test_killed_canary_auto_leaves_nginx_valid_and_rollback_works",
    "tests/integration/test_deploy_types.py::test_rollback_to_previous_redeploys_the_earlier_stable_build",
    "tests/integration/test_deploy_types.py::test_stable_deploy_without_a_serving_canary_goes_through_it",
    "tests/integration/test_deploy_types.py::test_rollback_to_a_stopped_color_restarts_and_gates_it",
    "tests/integration/test_set_weights.py::test_a_restarted_slot_drops_nothing_and_is_not_kept_out",
    "tests/integration/test_deploy_types.py::test_rollback_moves_traffic_even_with_the_docker_engine_down",
    "tests/integration/test_deploy_types.py::test_canary_unhealthy_while_the_probe_runs_is_rolled_back",
    "tests/integration/test_deploy_types.py::test_blue_green_watch_switches_back_when_the_new_color_fails",
    "tests/integration/test_compose_deploy.py::",
    "tests/integration/test_deploy_watch.py::",  # under load, 0 failed requests; a hold's timing
    # judged deploys under load: a latency decision (two suites at once made stable's p99 1.1 s), 0 failed
    # requests, stable's health answered within its timeout
    "tests/integration/test_deploy_judgement.py::",
    # issue 12 end to end: deploys through two routers and a front balancer, 0 failed requests under load
    "tests/integration/test_many_routers.py::test_canary_auto_promote_rollback_through_the_front",
    "tests/integration/test_many_routers.py::test_blue_green_through_the_front_drops_nothing",
    "tests/integration/test_many_routers.py::test_nginx_t_failing_on_router2_restores_router1",
    "tests/integration/test_many_routers.py::test_a_canary_failing_on_host2_only_rolls_back_both_routers",
    "tests/integration/test_many_routers.py::test_kill_9_at_5_random_points",
    "tests/integration/test_many_routers.py::test_two_agents_deploying_at_once_exclude_each_other",
    "tests/integration/test_health_gate.py::test_start_period_failures_do_not_count",  # 3 tries in 0.35 s
    "tests/integration/test_webhook.py::test_accepted_push_is_recorded_answered_fast_and_acted_on_once",
    "tests/integration/test_webhook_workers.py::test_two_receivers_take_100_at_once_none_reset_each_acted_on_exactly_once",
    "tests/integration/test_webhook.py::test_a_trickled_body_or_header_is_cut_at_the_request_deadline",
    "tests/integration/test_webhook.py::test_ps_webhook_serve_cuts_a_body_sent_one_byte_every_5_s",
    "tests/integration/test_health_gate.py::test_worker_ready_at_4s_does_not_pass_at_1_2s",
    # their first try must come within a delay (1.5 s app start, Docker's 2 s first check, a registry
    # up after 2.5 s): under the workers' load ps may start later than that
    "tests/integration/test_health_gate.py::test_sample_app_healthy_after_a_delay",
    "tests/integration/test_health_gate.py::test_container_docker_healthcheck",
    "tests/integration/test_push.py::test_transient_failures_are_retried_until_the_registry_answers",
    # CodeNarc walks the checkout, which the workers write in meanwhile (and its JVM starves beside them)
    "tests/ci/test_jenkinsfile.py::test_npm_groovy_lint_passes",
)
# Tests of one group run one after another on one worker: the CI files' runs (each a JVM or node plus
# ps, several at once would starve the machine) and test_image (its module fixture builds the ps image).
XDIST_GROUPS = {
    "jenkins": ("tests/ci/test_jenkinsfile.py::",),
    "gitlab": ("tests/ci/test_gitlab_ci.py::",),
    "image": ("tests/integration/test_image.py::",),
}


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the SERIAL tests `serial`, and those of XDIST_GROUPS with their xdist_group (no effect
    without xdist)."""
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
        group = xdist_group_of(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def xdist_group_of(nodeid: str) -> str | None:
    """The XDIST_GROUPS group of a test id, if any."""
    return next((group for group, prefixes in XDIST_GROUPS.items() if nodeid.startswith(prefixes)), None)


if importlib.util.find_spec("xdist") is not None:

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """`--dist loadgroup` grouped by XDIST_GROUPS in the controller: xdist 3.8 tags the group onto
        item._nodeid, which pytest 9 no longer reads, so its own loadgroup would not group at all."""
        if config.getvalue("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Grouped(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return xdist_group_of(nodeid) or nodeid

        return Grouped(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """At the very end, in the run's top process: stop the dockerd the run started (if any)."""
    stop_run_engine()


# ---------------------------------------------------------------- running ps


class PsRun:
    """Runs the real `ps` CLI in a subprocess (exit codes, stdout and stderr as a user sees them)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full_env = {**self.env, **(env or {})}
        return subprocess.run([sys.executable, "-m", "pipeline_steps", *args], env=full_env,
                              cwd=cwd or self.cwd, capture_output=True, text=True, input=input,
                              timeout=timeout, check=False)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """The same run, started in the background (stdout and stderr piped)."""
        return subprocess.Popen([sys.executable, "-m", "pipeline_steps", *args],
                                env={**self.env, **(env or {})}, cwd=self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "PYTHONPATH", "SYSTEMROOT", ENV, ENV2,
            PROBE_SEED)
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory outside any CI (no CI_* or Jenkins variables)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def ps(workdir: Path) -> PsRun:
    """`ps(...)` without a Docker engine in its environment."""
    env = _base_env()
    env["XDG_STATE_HOME"] = str(workdir / ".state")
    env["PS_LOCK_ENGINE"] = "off"  # no engine: the deploy lock stays on this agent (the kernel lock)
    return PsRun(env, workdir)


# ---------------------------------------------------------------- Docker


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The engine that answers, else the run's own dockerd (shared by xdist workers; stopped at the end)."""
    yield run_engine()


@pytest.fixture(scope="session")
def docker_client(engine: Engine) -> Iterator[Any]:
    client = engine.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    return images.ensure_base_image(docker_client)


@pytest.fixture(scope="session")
def sample_image(docker_client: Any, base_image: str) -> Iterator[str]:
    """The sample app built once per session, tagged pipeline-steps/sample-app:<SAMPLE_BUILD_ID>-<run>:
    a tag of this run alone, so a parallel run's build never moves it (its tag goes at the end)."""
    tag = f"pipeline-steps/sample-app:{SAMPLE_BUILD_ID}-{unique('r')}"
    docker_client.images.build(path=str(images.SAMPLE_APP), tag=tag, rm=True,
                               buildargs={"BUILD_ID": SAMPLE_BUILD_ID, "BASE_IMAGE": base_image})
    yield tag
    try:
        docker_client.images.remove(tag)
    except Exception:
        pass


@pytest.fixture
def docker_ps(engine: Engine, ps: PsRun) -> PsRun:
    """`ps(...)` with DOCKER_HOST set to the bed's engine."""
    return PsRun({**ps.env, "DOCKER_HOST": engine.base_url, "PS_LOCK_ENGINE": "on"}, ps.cwd)


@pytest.fixture
def run_sample(docker_client: Any, sample_image: str) -> Iterator[Callable[..., tuple[Any, int]]]:
    """Start a sample-app container on a free port of the run's address:
    `container, port = run_sample(ENV=...)`."""
    started: list[Any] = []

    def run(image: str | None = None, port: int | None = None, name: str | None = None,
            wait: bool = True, **env: str) -> tuple[Any, int]:
        host_port = port or free_port()
        container = docker_client.containers.run(
            image or sample_image, detach=True, name=name or unique("pst-app-"),
            environment={k: str(v) for k, v in env.items()},
            ports={"80/tcp": (address(), host_port)}, labels={"pipeline-steps.test": "1"})
        started.append(container)
        if wait:
            wait_port(host_port, timeout=15)
        return container, host_port

    yield run
    for c in started:
        try:
            c.remove(force=True)
        except Exception:
            pass


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """pytest-httpserver's `httpserver` listens on the run's address (on a port the kernel picks)."""
    return address(), 0


# ---------------------------------------------------------------- registry and nginx


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., Nginx]]:
    """`start(servers, upstreams)`; every nginx started is stopped afterwards."""
    started: list[Nginx] = []

    def start(servers: str, upstreams: str = "", **kw: Any) -> Nginx:
        n = start_nginx(servers, upstreams, **kw)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


# ---------------------------------------------------------------- projects


@pytest.fixture
def project(workdir: Path) -> Callable[..., Path]:
    """Write ps.yaml (a dict or YAML text) into the work dir and return its path."""

    def write(config: dict[str, Any] | str, name: str = "ps.yaml") -> Path:
        path = workdir / name
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture
def git_repo(workdir: Path) -> Path:
    """The work dir as a git checkout with the sample app committed."""
    app = images.copy_sample_app(workdir / "app")
    assert app.exists()
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "sample app"]):
        subprocess.run(["git", *args], cwd=workdir, check=True, capture_output=True)
    return workdir


def head_sha(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
