"""The local git checkout, read through the git command (there is no git SDK among our dependencies)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _git(cwd: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def head_commit(cwd: Path) -> str | None:
    """Full sha of HEAD, or None outside a checkout."""
    return _git(cwd, "rev-parse", "--verify", "HEAD")


def is_dirty(cwd: Path) -> bool:
    """True when tracked files differ from HEAD (untracked files do not count: `git describe --dirty`)."""
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return bool(status)


def branch(cwd: Path) -> str | None:
    name = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    return None if name in (None, "HEAD") else name


def commit_field(cwd: Path, fmt: str) -> str | None:
    """A field of the HEAD commit, e.g. `%an <%ae>` or `%s`."""
    return _git(cwd, "log", "-1", f"--format={fmt}")


def remote_url(cwd: Path) -> str | None:
    return _git(cwd, "config", "--get", "remote.origin.url")
