"""The nginx router adapter: the Router interface (adapters/interfaces.py) over a host or container nginx.

Modules: errorlog (where nginx says a reload failed), procs (master and workers from `docker top`),
runners (HostRunner / ContainerRunner: how nginx commands run), control (NginxControl: the safe apply of
the ps-owned include), fake (FakeRouter, in memory, for tests). Everything that used to be importable
from `pipeline_steps.adapters.nginx` still is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline_steps.adapters.nginx.control import (
    BACKUP_DIR,
    ApplyResult,
    InstallResult,
    NginxControl,
    NginxFailed,
    _nginx_message,
)
from pipeline_steps.adapters.nginx.errorlog import (
    ContainerLog,
    FileLog,
    LogWatch,
    log_lines_after,
    parse_log_timestamp,
    reload_failure,
)
from pipeline_steps.adapters.nginx.procs import Proc, nginx_tree, parse_top
from pipeline_steps.adapters.nginx.runners import (
    DEFAULT_PID,
    ContainerRunner,
    HostRunner,
    NginxRunner,
    nginx_command,
)

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import Router
    from pipeline_steps.config import Host, NginxRouter

__all__ = [
    "BACKUP_DIR", "DEFAULT_PID", "ApplyResult", "ContainerLog", "ContainerRunner", "FileLog", "HostRunner",
    "InstallResult", "LogWatch", "NginxControl", "NginxFailed", "NginxRunner", "Proc", "log_lines_after",
    "nginx_command", "nginx_tree", "parse_log_timestamp", "parse_top", "reload_failure", "router_for",
    "use_router", "_nginx_message",
]

_override: Router | Mapping[str, Router] | None = None


def router_for(router: NginxRouter, docker_host: Host | None = None) -> Router:
    """The Router for a configured router: nginx here or in router.container on `docker_host`'s engine
    (callers pass `config.router_host(router)`).

    Tests can swap in a FakeRouter for every caller with `use_router` (the one factory all steps use).
    """
    if isinstance(_override, Mapping):
        return _override[router.name]
    if _override is not None:
        return _override
    return NginxControl(router, docker_host=docker_host)


def use_router(fake: Router | Mapping[str, Router] | None) -> None:
    """Make `router_for` return `fake`, or fake[router.name] for a mapping of router names (None: the
    real nginx again). For tests and the fast tier."""
    global _override
    _override = fake
