"""The one atomic file write: every file ps writes whole (env files, the nginx include, reports, lock
records) goes through `atomic_write`, so a reader never sees half a file and a crash leaves the old one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, mode: int = DEFAULT_MODE,
                 encoding: str = "utf-8") -> Path:
    """Write `data` to `path` atomically: a temp file in the same directory, fsync, chmod `mode`, rename,
    fsync the directory. The temp file is removed on any failure (the old file stays as it was)."""
    target = Path(path)
    raw = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.ps-tmp-", dir=target.parent)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)
    return target


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in `directory` durable (best effort: some filesystems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
