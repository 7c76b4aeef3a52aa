"""Where the include ps owns lives: on this machine (LocalFiles) or in the router's container, reached
through its host's Docker engine alone (EngineFiles).

The rule (`engine_backed`): a container router (router.container) is driven through the engine when its
host's endpoint is not a unix socket of this machine (tcp://, ssh://: the include is on that machine), or
when router.include's directory does not exist here (a named volume, a path only the container sees).
Otherwise (host nginx, or a local container with the include's directory bind-mounted from here) the
include is a local file, as before.

EngineFiles, all through DockerHost:
- read: `get_file` (the engine's archive of the file); a stopped container's file still reads;
- write, atomic: `put_file` of the new text as `.<name>.ps-tmp-<random>` in the include's own directory,
  then `mv -f` by exec (a rename inside one directory: nginx never reads half a file);
- backups: in `ps-backups/` beside the include inside the container (as LocalFiles keeps them beside the
  local file), the oldest pruned past router.backups;
- lock: the flock of LocalFiles, but on this agent (the container's directory cannot hold an flock):
  `$XDG_STATE_HOME/pipeline-steps/routers/<host endpoint + container>.lock`. It serialises the ps
  processes of this agent; two agents are kept apart by the deploy's engine lock (deploy/lock/engine.py).
The container needs `mv`, `rm`, `mkdir`, `ls`, `test` (and `stat`, `tail` for the access log): Debian's
nginx image has them (coreutils), the bed's image has busybox's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING

from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import BadInput, Unreachable
from pipeline_steps.files import atomic_write

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import DockerHost
    from pipeline_steps.adapters.nginx.runners import ContainerRunner
    from pipeline_steps.analysis.accesslog import AccessLogTail

BACKUP_DIR = "ps-backups"


def engine_backed(router: NginxRouter, host: Host | None) -> bool:
    """Whether the router's include is read and written through its container's engine (module doc)."""
    if not router.container:
        return False
    endpoint = (host or Host(name="local")).endpoint
    return not endpoint.startswith("unix://") or not Path(router.include).parent.is_dir()


def lock_root() -> Path:
    """This agent's directory of router locks: $XDG_STATE_HOME/pipeline-steps/routers."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pipeline-steps" / "routers"


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S.%f")


class IncludeFiles:
    """The include file, its backups and its lock (LocalFiles or EngineFiles)."""

    def __init__(self, router: NginxRouter) -> None:
        self.router = router
        self.path: PurePath = Path(router.include)

    def where(self, path: PurePath | None = None) -> str:
        """The include (or `path`) as messages name it."""
        return str(path or self.path)

    def backup_dir(self) -> PurePath:
        return self.path.parent / BACKUP_DIR

    def directory_exists(self) -> bool:
        raise NotImplementedError

    def read_text(self) -> str | None:
        """The include's text, None when it does not exist yet."""
        raise NotImplementedError

    def write(self, text: str) -> None:
        """Replace the include atomically (0644)."""
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def backups(self) -> list[PurePath]:
        """Backups of the include, oldest first."""
        raise NotImplementedError

    def backup(self, text: str, keep: int) -> PurePath:
        """Save `text` as a new backup; keep the newest `keep` (0: all)."""
        raise NotImplementedError

    def pending_path(self) -> PurePath:
        """The marker of a change written but not yet reloaded (a kill between the two leaves it)."""
        return self.backup_dir() / f"{self.path.name}.pending"

    def set_pending(self, pending: bool) -> None:
        """Put or remove the marker (pending_path)."""
        raise NotImplementedError

    def is_pending(self) -> bool:
        raise NotImplementedError

    def _is_backup(self, name: str) -> bool:
        return name.startswith(self.path.name + ".") and name.endswith(".bak")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One ps of this agent at a time changes this include."""
        lock = self.lock_path()
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def lock_path(self) -> Path:
        raise NotImplementedError


class LocalFiles(IncludeFiles):
    """The include as a file of this machine (host nginx, or the host side of a bind mount)."""

    path: Path

    def directory_exists(self) -> bool:
        return self.path.parent.is_dir()

    def read_text(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BadInput(f"cannot read nginx include file {self.path}: {exc}") from None

    def write(self, text: str) -> None:
        atomic_write(self.path, text, mode=0o644)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def backups(self) -> list[PurePath]:
        d = Path(self.backup_dir())
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if self._is_backup(p.name))

    def backup(self, text: str, keep: int) -> PurePath:
        target = Path(self.backup_dir()) / f"{self.path.name}.{_stamp()}.bak"
        atomic_write(target, text, mode=0o644)
        for old in self.backups()[: -keep]:
            Path(old).unlink(missing_ok=True)
        return target

    def set_pending(self, pending: bool) -> None:
        marker = Path(self.pending_path())
        if pending:
            atomic_write(marker, "written, not yet reloaded\n", mode=0o644)
        else:
            marker.unlink(missing_ok=True)

    def is_pending(self) -> bool:
        return Path(self.pending_path()).exists()

    def lock_path(self) -> Path:
        return Path(self.backup_dir()) / ".lock"


class EngineFiles(IncludeFiles):
    """The include inside the router's container, through its host's engine (module doc)."""

    def __init__(self, router: NginxRouter, runner: ContainerRunner, locks: Path | None = None) -> None:
        super().__init__(router)
        self.path = PurePosixPath(router.include)
        self.runner = runner
        self.locks = locks or lock_root()

    def where(self, path: PurePath | None = None) -> str:
        return f"{path or self.path} in container {self.runner.name} ({self.runner.host.endpoint})"

    def _exec(self, *cmd: str) -> tuple[int, str]:
        runner = self.runner
        code, text = runner.call(f"exec {cmd[0]}", runner.engine().exec, runner.container().id, list(cmd))
        if code in (126, 127):
            raise Unreachable(f"nginx container {runner.name} cannot run {cmd[0]} (ps needs mv, rm, mkdir "
                              f"and test there: coreutils or busybox): {text.strip()[:200]}")
        return code, text

    def directory_exists(self) -> bool:
        return self._exec("test", "-d", str(self.path.parent))[0] == 0

    def read_text(self) -> str | None:
        runner = self.runner
        data = runner.call("read of the include", runner.engine().get_file, runner.name, str(self.path))
        return None if data is None else data.decode("utf-8", errors="replace")

    def _put(self, path: PurePath, text: str) -> None:
        runner = self.runner
        try:
            runner.call(f"write of {path}", runner.engine().put_file, runner.container().id, str(path),
                        text.encode("utf-8"), 0o644)
        except Unreachable as exc:
            if "is gone" in exc.message and runner.engine().container(runner.name) is not None:
                raise BadInput(f"directory {path.parent} does not exist in container {runner.name} "
                               "(router.include)") from None
            raise

    def write(self, text: str) -> None:
        tmp = self.path.parent / f".{self.path.name}.ps-tmp-{uuid.uuid4().hex[:12]}"
        self._put(tmp, text)
        code, said = self._exec("mv", "-f", str(tmp), str(self.path))
        if code != 0:
            self._exec("rm", "-f", str(tmp))
            raise BadInput(f"cannot write nginx include {self.where()}: {said.strip()[:300]}")

    def remove(self) -> None:
        self._exec("rm", "-f", str(self.path))

    def backups(self) -> list[PurePath]:
        runner = self.runner
        names = runner.call("listing of the backups", runner.engine().list_dir, runner.name,
                            str(self.backup_dir()))
        return sorted(self.backup_dir() / n for n in names or () if self._is_backup(n))

    def backup(self, text: str, keep: int) -> PurePath:
        self._exec("mkdir", "-p", str(self.backup_dir()))
        target = self.backup_dir() / f"{self.path.name}.{_stamp()}.bak"
        self._put(target, text)
        old = self.backups()[: -keep]
        if old:
            self._exec("rm", "-f", *map(str, old))
        return target

    def set_pending(self, pending: bool) -> None:
        if pending:
            self._exec("mkdir", "-p", str(self.backup_dir()))
            self._put(self.pending_path(), "written, not yet reloaded\n")
        else:
            self._exec("rm", "-f", str(self.pending_path()))

    def is_pending(self) -> bool:
        return self._exec("test", "-f", str(self.pending_path()))[0] == 0

    def lock_path(self) -> Path:
        endpoint = self.runner.host.endpoint
        key = hashlib.sha256(f"{endpoint}\0{self.runner.name}\0{self.path}".encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.runner.name)[:60]
        return self.locks / f"{readable}-{key}.lock"


class EngineLogSource:
    """A LogSource (analysis/accesslog.py) reading a file in a container through its engine by offset."""

    def __init__(self, host: Host, container: str, path: str, engine: DockerHost | None = None) -> None:
        self.host = host
        self.container = container
        self.path = path
        self._engine = engine

    def read_from(self, offset: int) -> tuple[str, int, bytes] | None:
        from pipeline_steps.adapters.interfaces import EngineError

        if self._engine is None:
            from pipeline_steps.adapters.docker_host import open_host

            self._engine = open_host(self.host, timeout=30)
        try:
            found = self._engine.read_file(self.container, self.path, offset)
        except EngineError as exc:
            raise Unreachable(f"access log {self.path} in container {self.container}: "
                              f"{str(exc).strip()[:300]}") from None
        return None if found is None else (found.ident, found.size, found.data)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None


def access_log_tail(router: NginxRouter, host: Host | None = None, *,
                    from_start: bool = False) -> AccessLogTail:
    """canary.analysis's reader of the router's ps_json access log: the local file, or through the
    engine (offset reads) for an engine-backed router (same rule as the include)."""
    from pipeline_steps.analysis.accesslog import AccessLogTail, SourceLogTail

    if engine_backed(router, host):
        source = EngineLogSource(host or Host(name="local"), router.container or "", router.access_log_path())
        return SourceLogTail(source, from_start=from_start)
    return AccessLogTail(router.access_log_path(), from_start=from_start)
