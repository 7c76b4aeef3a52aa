"""The nginx master and its workers: `docker top` rows for nginx in a container, /proc for nginx here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def shutting_down(pid: int) -> bool:
    """True when an nginx worker's title says it is shutting down (it no longer accepts)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"shutting down" in fh.read()
    except OSError:
        return True


@dataclass(frozen=True)
class Proc:
    """One row of `docker top`."""

    pid: int
    ppid: int
    command: str


def parse_top(top: dict[str, Any]) -> list[Proc]:
    """Rows of `container.top()` (`ps -ef` columns: UID PID PPID ... CMD) as Proc; bad rows skipped."""
    titles = [str(t).upper() for t in top.get("Titles") or []]
    if "PID" not in titles or "PPID" not in titles:
        return []
    i_pid, i_ppid = titles.index("PID"), titles.index("PPID")
    i_cmd = next((titles.index(t) for t in ("CMD", "COMMAND", "ARGS") if t in titles), len(titles) - 1)
    procs: list[Proc] = []
    for row in top.get("Processes") or []:
        try:
            procs.append(Proc(int(row[i_pid]), int(row[i_ppid]), " ".join(str(c) for c in row[i_cmd:])))
        except (IndexError, TypeError, ValueError):
            continue
    return procs


def nginx_tree(procs: Sequence[Proc]) -> tuple[int | None, dict[int, bool]]:
    """The nginx master among `procs` and its children, each with True when it is shutting down.

    The master is the process titled `nginx: master process`, else the container's first process
    (the one whose parent lies outside the container)."""
    pids = {p.pid for p in procs}
    masters = [p for p in procs if "master process" in p.command]
    roots = [p for p in procs if p.ppid not in pids]
    master = next((p for p in masters if p.ppid not in pids), None) or \
        (masters[0] if masters else None) or (roots[0] if roots else None)
    if master is None:
        return None, {}
    return master.pid, {p.pid: "shutting down" in p.command for p in procs if p.ppid == master.pid}

