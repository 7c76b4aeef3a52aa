"""One-off jobs: a command in a fresh container of a service's image, with the service's run settings
(networks, volumes, env, limits), on one host; its output followed, its exit code kept, the container
removed afterwards. `ps run` and the deploy hooks (migrations before traffic moves) use it."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline_steps.adapters import run_options
from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import ensure_image, open_host
from pipeline_steps.config import Config, Host, Service
from pipeline_steps.errors import BadInput

LABEL_JOB = f"{slot_names.LABEL_PREFIX}.job"
TAIL_LINES = 20


@dataclass
class JobResult:
    """How a job ended: its exit code (None when killed at the timeout) and the last lines it wrote."""

    service: str
    host: str
    build_id: str
    command: tuple[str, ...]
    container: str
    exit_code: int | None
    elapsed: float
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def summary(self) -> str:
        how = "timed out and was killed" if self.exit_code is None else f"exited {self.exit_code}"
        return (f"job {' '.join(self.command)[:80]} ({self.service} {self.build_id} on host {self.host}) "
                f"{how} after {self.elapsed:.1f}s")


def job_host(config: Config, name: str | None, service: Service | None = None) -> Host:
    """The named host, or the first one `service` runs on (its `hosts:`; every host by default)."""
    allowed = config.hosts_of(service) if service is not None else config.hosts
    if name is None:
        return allowed[0]
    for host in config.hosts:
        if host.name == name:
            if host not in allowed and service is not None:
                raise BadInput(f"service {service.name} runs only on {', '.join(h.name for h in allowed)} "
                               f"(its hosts:), not on {name}")
            return host
    raise BadInput(f"unknown host {name!r} (configured: {', '.join(h.name for h in config.hosts)})")


def run_job(config: Config, service: Service, build_id: str, command: Sequence[str], *,
            host: Host | None = None, timeout: float = 600.0,
            on_output: Callable[[str], None] | None = None,
            environ: dict[str, str] | None = None) -> JobResult:
    """Run `command` in a new container of `service`'s image `build_id`; wait at most `timeout` seconds.

    Every output line goes to `on_output` as it comes. The container is removed in every case.
    """
    from pipeline_steps.operations.slot_spec import slot_environment

    if not command:
        raise BadInput("no command to run (give it after --)")
    host = host or config.hosts_of(service)[0]
    env = slot_environment(config, service, "job", environ)
    engine = open_host(host)
    name = f"{config.app}-{service.name}-job-{secrets.token_hex(4)}"
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        ref = config.image_ref(service, build_id)
        ensure_image(engine, ref)
        options = {**run_options.create_options(service.run), "command": list(command)}
        labels = {**dict(service.run.labels), slot_names.LABEL_APP: config.app,
                  slot_names.LABEL_SERVICE: service.name, slot_names.LABEL_SLOT: "job",
                  slot_names.LABEL_BUILD_ID: build_id, LABEL_JOB: "1"}
        started = time.monotonic()
        engine.create(name, ref, labels=labels, environment=env, ports={}, restart_policy={"Name": "no"},
                      log_config={"Type": "json-file", "Config": {}}, options=options,
                      networks=run_options.networks(service.run))
        engine.start(name)

        def follow() -> None:
            try:
                for line in engine.follow_logs(name):
                    tail.append(line)
                    if on_output is not None:
                        on_output(line)
            except Exception:  # the stream ends when the container is killed or removed
                pass

        reader = threading.Thread(target=follow, name=f"ps-job-{name}", daemon=True)
        reader.start()
        code = engine.wait(name, timeout)
        if code is None:
            engine.stop(name, timeout=0)
        reader.join(timeout=5)
        return JobResult(service.name, host.name, build_id, tuple(command), name, code,
                         round(time.monotonic() - started, 3), list(tail))
    finally:
        try:
            engine.remove(name)
        finally:
            engine.close()
