"""A RunSpec as the Docker SDK's `containers.create` options (pure: no engine is touched)."""

from __future__ import annotations

from typing import Any

from pipeline_steps.config.run_spec import RunSpec

NS = 1_000_000_000


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * NS))


def create_options(spec: RunSpec) -> dict[str, Any]:
    """SDK keyword arguments for every set field (networks, labels, restart and log are handled apart)."""
    opts: dict[str, Any] = {}
    if spec.command is not None:
        opts["command"] = list(spec.command)
    if spec.entrypoint is not None:
        opts["entrypoint"] = list(spec.entrypoint)
    if spec.user is not None:
        opts["user"] = spec.user
    if spec.workdir is not None:
        opts["working_dir"] = spec.workdir
    if spec.memory is not None:
        opts["mem_limit"] = spec.memory
    if spec.cpus is not None:
        opts["nano_cpus"] = int(round(spec.cpus * NS))
    if spec.pids is not None:
        opts["pids_limit"] = spec.pids
    if spec.extra_hosts:
        opts["extra_hosts"] = dict(spec.extra_hosts)
    if spec.ulimits:
        opts["ulimits"] = [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in spec.ulimits]
    if spec.stop_signal is not None:
        opts["stop_signal"] = spec.stop_signal
    if spec.volumes:
        opts["volumes"] = [v.bind() for v in spec.volumes]
    if spec.healthcheck is not None:
        hc = spec.healthcheck
        check: dict[str, Any] = {"test": list(hc.test)}
        for key, value in (("interval", _ns(hc.interval)), ("timeout", _ns(hc.timeout)),
                           ("start_period", _ns(hc.start_period)), ("retries", hc.retries)):
            if value is not None:
                check[key] = value
        opts["healthcheck"] = check
    return opts


def networks(spec: RunSpec) -> list[tuple[str, tuple[str, ...]]]:
    """(network, aliases) to join, in order: the first at create, the others before start."""
    return [(n.name, n.aliases) for n in spec.networks]
