"""Safe changes to the nginx include file ps owns: backup, `nginx -t`, atomic rename, reload, confirm.

`nginx -s reload` exits 0 even when the master cannot apply the new config (a bind failure, say), so a
reload counts only when the master's worker processes were replaced and the error log shows no
`[emerg]` since the signal. Any failure puts the previous file back (and reloads back), so nginx is
never left with a config that fails `nginx -t`.

nginx runs either on this machine (router.nginx.prefix/conf) or in a container (router.container):
then `nginx -t` and `nginx -s reload` run through the Docker API (`exec`), the workers are read with
`top` and `[emerg]` lines come from the container's logs (or router.nginx.error_log when the log is
bind-mounted here). The include's file I/O (read, atomic write, backups, lock) is `self.files`
(adapters/nginx/files.py): a local file (host nginx, or the host side of a bind mount), or, for a
container on a remote engine or with the include in a named volume, through that engine alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from pipeline_steps.adapters.nginx.files import (
    BACKUP_DIR,
    EngineFiles,
    IncludeFiles,
    LocalFiles,
    engine_backed,
)
from pipeline_steps.adapters.nginx.runners import ContainerRunner, HostRunner, NginxRunner, nginx_command
from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import BadInput, CheckFailed, PsError, Unreachable
from pipeline_steps.waiting import poll_until

__all__ = ["BACKUP_DIR", "ApplyResult", "InstallResult", "NginxControl", "NginxFailed"]


RELOADED_BACK = " and reloaded"


class NginxFailed(CheckFailed):
    """nginx refused the change (exit 1); the previous file is back in place."""


@dataclass
class ApplyResult:
    """What an apply did."""

    path: str
    changed: bool
    created: bool = False
    backup: str | None = None
    reloaded: bool = False
    workers_before: list[int] = field(default_factory=list)
    workers_after: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Staged:
    """A change written and tested on one router (phase 1), not necessarily reloaded yet."""

    old_text: str | None
    text: str
    result: ApplyResult
    written: bool = False  # the new text is in place (False again once restored)
    was_pending: bool = False  # an earlier change was written but never reloaded (killed in between)


@dataclass
class InstallResult:
    """What writing a first include did."""

    path: str
    written: bool
    running: bool
    reloaded: bool = False
    tested: bool = False
    backup: str | None = None
    note: str = ""



class NginxControl:
    """Reads, tests, writes and reloads the ps-owned include of an nginx here or in a container."""

    def __init__(self, router: NginxRouter, *, confirm_timeout: float = 5.0,
                 docker_host: Host | None = None, lock_dir: Path | None = None) -> None:
        self.router = router
        self.path = Path(router.include)
        self.confirm_timeout = confirm_timeout
        self.runner: NginxRunner = (ContainerRunner(router, docker_host) if router.container
                                    else HostRunner(router))
        # the include's file I/O: through the container's engine (remote host, named volume) or here
        self.files: IncludeFiles = (EngineFiles(router, self.runner, lock_dir)
                                    if isinstance(self.runner, ContainerRunner)
                                    and engine_backed(router, docker_host) else LocalFiles(router))

    # ------------------------------------------------------------ nginx invocations

    def command(self, *args: str) -> list[str]:
        """The nginx command line with the configured prefix and conf."""
        return nginx_command(self.router, *args)

    def test(self) -> str | None:
        """Run `nginx -t` on the whole config; None when it passes, else nginx's message."""
        code, stderr = self.runner.run("-t", "-q")
        if code == 0:
            return None
        return _nginx_message(stderr) or f"nginx -t exited {code}"

    def close(self) -> None:
        """Let go of the Docker client a container runner holds."""
        self.runner.close()

    def reload(self) -> tuple[list[int], list[int]]:
        """Signal a reload and confirm it: new workers, and nginx did not give up. NginxFailed otherwise."""
        runner = self.runner
        master, old = runner.processes()
        if master is None:
            raise Unreachable(f"{runner.where()} is not running")
        before = set(old)
        log = runner.log()
        mark = log.mark()
        code, stderr = runner.run("-s", "reload")
        if code != 0:
            raise NginxFailed(f"nginx reload failed: {_nginx_message(stderr)}")
        deadline = time.monotonic() + self.confirm_timeout

        def confirmed(late: bool = False) -> tuple[list[int], list[int]] | None:
            emerg = log.failure_since(mark)
            if emerg:
                raise NginxFailed(f"nginx could not apply the new config: {emerg}")
            now_master, now = runner.processes()
            if now_master != master:
                raise NginxFailed("nginx master exited during the reload")
            fresh = set(now) - before
            # the old workers stop accepting once they say "shutting down" (or are gone)
            if fresh and (late or all(now[pid] for pid in before & set(now))
                          or time.monotonic() > deadline):
                return sorted(before), sorted(fresh)
            return None

        done = poll_until(confirmed, timeout=self.confirm_timeout, interval=runner.poll_interval)
        done = done or confirmed(late=True)
        if done is None:
            raise NginxFailed(f"nginx did not replace its workers within {self.confirm_timeout:g}s "
                              "after the reload signal")
        return done

    # ------------------------------------------------------------ the include file

    def read_text(self) -> str | None:
        return self.files.read_text()

    def backup_dir(self) -> PurePath:
        return self.files.backup_dir()

    def backups(self) -> list[PurePath]:
        """Backups of the include file, oldest first."""
        return self.files.backups()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One ps at a time changes this include file."""
        with self.files.locked():
            yield

    def _write(self, text: str) -> None:
        self.files.write(text)

    def _backup(self, text: str) -> PurePath:
        return self.files.backup(text, self.router.backups)

    def _restore(self, old_text: str | None) -> None:
        if old_text is None:
            self.files.remove()
        else:
            self._write(old_text)

    def check_dir(self) -> None:
        """BadInput when the include's directory is missing (before anything is locked or written)."""
        if not self.files.directory_exists():  # here, or in the container through its engine
            where = self.files.where(self.path.parent)
            raise BadInput(f"directory of router.include does not exist: {where}")

    def stage(self, text: str, *, dry_run: bool = False) -> Staged:
        """Phase 1 of a change: back up, write atomically and `nginx -t`. On a failure the previous file
        is back and the error raised; nothing is reloaded. Call inside `locked()`."""
        old_text = self.read_text()
        staged = Staged(old_text=old_text, text=text,
                        result=ApplyResult(path=str(self.path), changed=old_text != text,
                                           created=old_text is None))
        if dry_run:
            return staged
        # a change killed between its write and its reload left the file right and nginx on the old
        # config: the marker says so, and the same text is then reloaded rather than skipped
        staged.was_pending = old_text is not None and self.files.is_pending()
        if not staged.result.changed and not staged.was_pending:
            return staged
        self.runner.ready()  # nginx (or its container) unreachable: nothing written
        if self.runner.processes()[0] is None:
            raise Unreachable(f"{self.runner.where()} is not running: nothing was changed; start "
                              f"nginx (`ps router init` writes {self.path.name} for a first start)")
        staged.result.changed = True
        if old_text is not None and old_text != text:
            staged.result.backup = str(self._backup(old_text))
        self.files.set_pending(True)
        self._write(text)
        staged.written = True
        try:
            problem = self.test()
        except Unreachable as exc:
            self._unstage(staged)
            raise _annotated(exc, "; previous file restored") from None
        if problem is not None:
            self._unstage(staged)
            raise NginxFailed(f"nginx -t rejected the change, previous file restored: {problem}")
        return staged

    def _unstage(self, staged: Staged) -> None:
        """The previous file back before any reload; the marker as it was before this change."""
        self._restore(staged.old_text)
        staged.written = False
        if not staged.was_pending:
            self.files.set_pending(False)

    def commit(self, staged: Staged) -> None:
        """Phase 2: reload and confirm a staged change. On a failure the previous file is back (and
        reloaded back) and the error raised."""
        if not staged.written:
            return
        try:
            before, after = self.reload()
        except (NginxFailed, Unreachable) as exc:
            self._restore(staged.old_text)
            staged.written = False
            note = self._reload_back(exc)
            if note == RELOADED_BACK:  # nginx runs the restored file: nothing is pending any more
                self.files.set_pending(False)
            raise _annotated(exc, f"; previous file restored{note}") from None
        self.files.set_pending(False)
        staged.result.reloaded = True
        staged.result.workers_before, staged.result.workers_after = before, after

    def restore(self, staged: Staged) -> str:
        """Undo a staged change that another router's failure voids: the previous file back, and
        reloaded back when it had been reloaded. "" when done, else what went wrong."""
        if not staged.written:
            return ""
        if not staged.result.reloaded:
            self._unstage(staged)
            return ""
        self._restore(staged.old_text)
        staged.written = False
        try:
            problem = self.test()
            if problem is not None:
                return f"the restored file fails nginx -t: {problem}"
            self.files.set_pending(True)
            self.reload()
            self.files.set_pending(False)
            staged.result.reloaded = False
            return ""
        except (NginxFailed, Unreachable) as exc:
            return f"reloading the restored file failed: {exc.message}"

    def apply(self, text: str, *, dry_run: bool = False) -> ApplyResult:
        """Put `text` in place safely and reload; the old file comes back on any failure."""
        started = time.monotonic()
        self.check_dir()
        try:
            with self.locked():
                staged = self.stage(text, dry_run=dry_run)
                if not staged.written:
                    return staged.result
                self.commit(staged)
                staged.result.seconds = round(time.monotonic() - started, 4)
                return staged.result
        finally:
            self.close()

    def install(self, text: str, *, force: bool = False) -> InstallResult:
        """Write a first include: with nginx running, the safe apply; without, write it and `nginx -t`.

        An existing file is left alone unless `force`. Without a running nginx the file is written
        atomically (0644) and tested with `nginx -t` when the binary (and router.nginx.conf, if set) are
        there; a failing test removes it again (NginxFailed).
        """
        self.check_dir()
        old_text = self.read_text()
        if old_text is not None and not force:
            return InstallResult(path=str(self.path), written=False, running=False, note="already there")
        if self.running():
            applied = self.apply(text)
            return InstallResult(path=str(self.path), written=applied.changed, running=True,
                                 reloaded=applied.reloaded, tested=applied.changed, backup=applied.backup,
                                 note="" if applied.changed else "already says so")
        try:
            with self.locked():
                result = InstallResult(path=str(self.path), written=old_text != text, running=False)
                if not result.written:
                    result.note = "already says so"
                    return result
                if old_text is not None:
                    result.backup = str(self._backup(old_text))
                self._write(text)
                skip = self._untestable()
                if skip:
                    result.note = f"nginx -t not run: {skip}"
                    return result
                try:
                    problem = self.test()
                except Unreachable as exc:
                    result.note = f"nginx -t not run: {exc.message}"
                    return result
                if problem is not None:
                    self._restore(old_text)
                    what = "previous file restored" if old_text is not None else "file removed again"
                    raise NginxFailed(f"nginx -t rejected {self.path}, {what}: {problem}")
                result.tested = True
                return result
        finally:
            self.close()

    def running(self) -> bool:
        """True when an nginx master runs (a missing or stopped nginx container counts as not running)."""
        try:
            self.runner.ready()
            return self.runner.processes()[0] is not None
        except Unreachable:
            return False

    def verify(self, text: str) -> str | None:
        """None when the include on disk says `text` and nginx runs with a config that passes `nginx -t`;
        else what is off."""
        try:
            if self.read_text() != text:
                return f"{self.path} does not hold the expected text"
            if self.files.is_pending():
                return (f"{self.path} was written but nginx was not reloaded since (an interrupted "
                        "change): the next change reloads it")
            if not self.running():
                return f"{self.runner.where()} is not running"
            return self.test()
        finally:
            self.close()

    def _untestable(self) -> str | None:
        """Why `nginx -t` cannot run here (no binary, no conf), or None."""
        import shutil

        if self.router.container:
            return f"nginx container {self.router.container} is not running"
        if shutil.which(self.router.binary) is None:
            return f"nginx binary {self.router.binary} not found (router.nginx.binary)"
        if self.router.conf and not Path(self.router.conf).is_file():
            return f"nginx conf {self.router.conf} does not exist (router.nginx.conf)"
        return None

    def _reload_back(self, failure: PsError) -> str:
        """After a failed reload of the new file: reload the restored one; a note for the message."""
        if not isinstance(failure, NginxFailed):
            return ""
        try:
            if self.test() is not None:
                return ""
            self.reload()
            return RELOADED_BACK
        except (NginxFailed, Unreachable) as again:
            return f" (reloading it failed too: {again.message})"


def _annotated(exc: PsError, note: str) -> PsError:
    exc.message = f"{exc.message}{note}"
    exc.args = (exc.message,)
    return exc


def _nginx_message(stderr: str) -> str:
    """nginx's own complaint: its [emerg]/[alert] lines, without the `nginx: ` prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    serious = [ln for ln in lines if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln] or lines
    text = "; ".join(ln.removeprefix("nginx: ") for ln in serious[:3])
    return text[:500]


