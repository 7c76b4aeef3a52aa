"""`ps router init`: the first include file, so nginx can start before any deploy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_steps.config import Config, Service
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.traffic import describe, load_live, require_router
from pipeline_steps.upstreams import UpstreamFile, default_upstream


@dataclass
class RouterInit:
    """What `ps router init` did."""

    include: str
    written: bool
    nginx_running: bool
    reloaded: bool
    tested: bool
    dry_run: bool
    backup: str | None
    note: str
    services: dict[str, str] = field(default_factory=dict)  # name -> `stable 999 : canary 1 (0.1 %)`
    locations: dict[str, list[str]] = field(default_factory=dict)  # issue 13: sticky location lines
    router: str = "router1"
    routers: list[RouterInit] = field(default_factory=list)  # many routers: each one's (this is router 1's)


def router_init(config: Config, services: Sequence[str] | None = None, *, force: bool = False,
                dry_run: bool = False) -> RouterInit:
    """Write the include with every (or the chosen) service's first upstream: stable 100 % with the
    canary at the minimum weight, or blue active with green as backup.

    An existing file is left alone ("already there") when it has the chosen services' upstreams; one it
    lacks is added, and `force` rewrites the chosen ones to that first state (other upstreams, comments
    and directives in the file are kept).
    """
    require_router(config)
    chosen = [config.service(n) for n in services] if services else \
        [s for s in config.services.values() if s.is_http]
    if not chosen:
        raise BadInput("no configured service: nothing to write")
    views = [config.for_router(r) for r in config.routers]
    for view in views:  # malformed: exit 2, before anything is written
        load_live(view)
    done = [_init_one(view, chosen, force=force, dry_run=dry_run) for view in views]
    first = done[0]
    if len(done) > 1:
        first.routers = done
    return first


def _init_one(config: Config, chosen: list[Service], *, force: bool, dry_run: bool) -> RouterInit:
    """router init for one router (`config`: its view, config.router the router)."""
    from pipeline_steps.adapters.nginx import router_for

    router = require_router(config)
    live = load_live(config)
    file = live if live is not None else UpstreamFile(path=Path(router.include))
    existing = set(file.upstreams())
    todo = [s for s in chosen if force or s.upstream not in existing]
    for service in todo:
        file.put(default_upstream(config, service))
    from pipeline_steps import sticky
    from pipeline_steps.analysis.include import put_judgement_log

    split_changed = sticky.apply(config, file)  # issue 13: the sticky split's blocks
    logs = put_judgement_log(config, file)  # canary.analysis (issue 14)
    result = RouterInit(include=router.include, written=False, nginx_running=False, reloaded=False,
                        tested=False, dry_run=dry_run, backup=None, note="", router=router.name,
                        services={s.name: describe(default_upstream(config, s), s, config) or ""
                                  for s in todo},
                        locations={s.name: sticky.location_lines(config, s) for s in chosen
                                   if sticky.enabled(config.canary) and s.pair("canary")})
    if not todo and not split_changed and not logs:
        result.note = "already there"
        return result
    if dry_run:
        result.note = "would change" if live is not None else "would create"
        return result
    done = router_for(router, config.router_host(router)).install(file.render(), force=True)
    result.written, result.nginx_running, result.reloaded = done.written, done.running, done.reloaded
    result.tested, result.backup, result.note = done.tested, done.backup, done.note
    return result
