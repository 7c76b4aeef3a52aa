"""Processes on this host, read from /proc (nginx workers, deploy-lock holders)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> set[int]:
    """PIDs whose parent is `pid`."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        rest = stat.rpartition(")")[2].split()
        if len(rest) > 1 and rest[1].isdigit() and int(rest[1]) == pid:
            found.add(int(entry.name))
    return found
