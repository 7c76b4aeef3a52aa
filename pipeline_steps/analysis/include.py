"""The judgement's two lines in the include ps owns: `log_format ps_json escape=json '...'` and
`access_log <router.access_log> ps_json;`, at http level, before the upstream blocks (crossplane
directives, never text). Called by every writer of the include (set-weights, switch, router init).

An `access_log` at http level applies only to the servers that have no `access_log` of their own (and
an http-level `access_log off;` turns it off): such a server needs the line itself, e.g.
`access_log /path/ps-access.json ps_json;` (the include must come before it: a log_format is defined
before it is used).
"""

from __future__ import annotations

from typing import Any

from pipeline_steps.analysis.accesslog import FORMAT_NAME, access_log_directive, log_format_directive

Directive = dict[str, Any]


def _ours(d: Directive) -> bool:
    args = list(d.get("args") or [])
    if d.get("directive") == "log_format":
        return bool(args) and args[0] == FORMAT_NAME
    return d.get("directive") == "access_log" and len(args) >= 2 and args[1] == FORMAT_NAME


def judgement_directives(config: Any) -> list[Directive]:
    """The directives canary.analysis needs in the include (none when it is off)."""
    if config.router is None or not config.canary.analysis.enabled:
        return []
    return [log_format_directive(), access_log_directive(config.router.access_log_path())]


def put_judgement_log(config: Any, file: Any) -> bool:
    """Make the include (an UpstreamFile) carry exactly the judgement's directives: added after the
    leading comments when canary.analysis is on, removed when it is off. True when it changed."""
    wanted = judgement_directives(config)
    kept = [d for d in file.directives if not _ours(d)]
    at = 0
    while at < len(kept) and kept[at].get("directive") == "#":
        at += 1
    new = kept[:at] + wanted + kept[at:]
    if new == file.directives:
        return False
    file.directives[:] = new
    return True
