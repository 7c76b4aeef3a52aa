"""In-memory fakes of DockerHost, Registry and Notifier, for the fast tier of tests.

    hosts = {"a": FakeDockerHost(Host("a")), "b": FakeDockerHost(Host("b", address="127.0.0.2"))}
    with factory.installed(FakeAdapters(hosts)):
        deploy_slot(config, "canary", None, "b1")

Scripted failures: `fail_start[name] = reason` (a new container of that name is refused a start; one that
ran before starts again), `exit_on_start[name] =
log` (it exits at once with that log), `held[(address, port)] = reason` (a process outside the engine holds
the port: bind tests and starts fail), `process_holder[(address, port)]` (what /proc would name),
`reachable = False` (the engine does not answer: the same exit-3 line as the real one), `gone` (names of
methods that fail as if the engine went away mid-call), `fail_build[tag] = error` (the build stops with
that error), `exec_results[cmd] = (code, output)`, `processes[name]` (what top shows), `write_log(name,
text)` (a line of the container's logs now), `add_file(name, path, text)` (a file in the container:
get_file, put_file, read_file and the execs `mv`, `rm`, `mkdir -p`, `ls -1`, `test -d` work over these
files). Pulls and registry lookups check the linked FakeRegistry's `users` as a real registry with auth
does. tests/integration/test_docker_host_contract.py runs the same
assertions against this fake and the real engine.
"""

from pipeline_steps.adapters.fakes.engine import FakeContainer, FakeDockerHost, FakeImage
from pipeline_steps.adapters.fakes.services import FakeAdapters, FakeNotifier, FakeRegistry

__all__ = ["FakeAdapters", "FakeContainer", "FakeDockerHost", "FakeImage", "FakeNotifier", "FakeRegistry"]
