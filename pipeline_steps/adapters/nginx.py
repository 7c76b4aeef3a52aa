"""Safe changes to the nginx include file ps owns: backup, `nginx -t`, atomic rename, reload, confirm.

`nginx -s reload` exits 0 even when the master cannot apply the new config (a bind failure, say), so a
reload counts only when the master's worker processes were replaced and the error log shows no
`[emerg]` since the signal. Any failure puts the previous file back (and reloads back), so nginx is
never left with a config that fails `nginx -t`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline_steps.adapters.proc import children, pid_alive
from pipeline_steps.config import NginxRouter
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable

BACKUP_DIR = "ps-backups"
DEFAULT_PID = "/run/nginx.pid"


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


def _shutting_down(pid: int) -> bool:
    """True when an nginx worker's title says it is shutting down (it no longer accepts)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"shutting down" in fh.read()
    except OSError:
        return True


class NginxControl:
    """Reads, tests, writes and reloads the ps-owned include of a local nginx."""

    def __init__(self, router: NginxRouter, *, confirm_timeout: float = 5.0) -> None:
        if router.container:
            raise BadInput("router.container (nginx inside a container) is not supported by this "
                           "version of ps; run ps on the nginx host (router.nginx.prefix/conf)")
        self.router = router
        self.path = Path(router.include)
        self.confirm_timeout = confirm_timeout
        self._main: dict[str, str] | None = None

    # ------------------------------------------------------------ nginx invocations

    def command(self, *args: str) -> list[str]:
        """The nginx command line with the configured prefix and conf."""
        cmd = [self.router.binary]
        if self.router.prefix:
            cmd += ["-p", self.router.prefix.rstrip("/") + "/"]
        if self.router.conf:
            cmd += ["-c", self.router.conf]
        return [*cmd, "-e", "stderr", *args]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=30,
                                  check=False)
        except FileNotFoundError:
            raise Unreachable(f"nginx binary not found: {self.router.binary} (router.nginx.binary)") from None
        except subprocess.TimeoutExpired:
            raise Unreachable("nginx did not answer within 30s") from None

    def test(self) -> str | None:
        """Run `nginx -t` on the whole config; None when it passes, else nginx's message."""
        done = self._run("-t", "-q")
        if done.returncode == 0:
            return None
        return _nginx_message(done.stderr) or f"nginx -t exited {done.returncode}"

    def _main_directives(self) -> dict[str, str]:
        """`pid` and `error_log` from the main conf (parsed with crossplane, main file only)."""
        if self._main is not None:
            return self._main
        found: dict[str, str] = {}
        conf = self.router.conf
        if conf and Path(conf).is_file():
            import crossplane

            payload = crossplane.parse(conf, single=True, check_ctx=False, check_args=False,
                                       catch_errors=True)
            for d in (payload.get("config") or [{}])[0].get("parsed") or []:
                if d.get("directive") in ("pid", "error_log") and d.get("args"):
                    found.setdefault(d["directive"], d["args"][0])
        self._main = found
        return found

    def _resolve(self, value: str) -> str:
        if os.path.isabs(value) or not self.router.prefix:
            return value
        return os.path.join(self.router.prefix, value)

    def pid_file(self) -> Path:
        if self.router.pid:
            return Path(self.router.pid)
        value = self._main_directives().get("pid")
        return Path(self._resolve(value)) if value else Path(DEFAULT_PID)

    def error_log(self) -> Path | None:
        if self.router.error_log:
            return Path(self.router.error_log)
        value = self._main_directives().get("error_log")
        if value and value not in ("stderr",) and not value.startswith(("syslog:", "memory:")):
            return Path(self._resolve(value))
        return None

    def master_pid(self) -> int | None:
        """The running master's PID, or None."""
        try:
            pid = int(self.pid_file().read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def workers(self) -> set[int]:
        """Current children of the master."""
        pid = self.master_pid()
        return children(pid) if pid else set()

    def reload(self) -> tuple[list[int], list[int]]:
        """Signal a reload and confirm it: new workers, no `[emerg]` since. NginxFailed otherwise."""
        master = self.master_pid()
        if master is None:
            raise Unreachable(f"nginx is not running (no live master in {self.pid_file()})")
        before = children(master)
        log = self.error_log()
        offset = log.stat().st_size if log and log.exists() else 0
        done = self._run("-s", "reload")
        if done.returncode != 0:
            raise NginxFailed(f"nginx reload failed: {_nginx_message(done.stderr)}")
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            emerg = _emergencies(log, offset)
            if emerg:
                raise NginxFailed(f"nginx could not apply the new config: {emerg}")
            now = children(master)
            if now - before:
                # the old workers stop accepting once they say "shutting down" (or are gone)
                if all(not pid_alive(pid) or _shutting_down(pid) for pid in before & now) \
                        or time.monotonic() > deadline:
                    return sorted(before), sorted(now - before)
            if not pid_alive(master):
                raise NginxFailed("nginx master exited during the reload")
            if time.monotonic() > deadline:
                raise NginxFailed(f"nginx did not replace its workers within {self.confirm_timeout:g}s "
                                  "after the reload signal")
            time.sleep(0.005)

    # ------------------------------------------------------------ the include file

    def read_text(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BadInput(f"cannot read nginx include file {self.path}: {exc}") from None

    def backup_dir(self) -> Path:
        return self.path.parent / BACKUP_DIR

    def backups(self) -> list[Path]:
        """Backups of the include file, oldest first."""
        d = self.backup_dir()
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.name.startswith(self.path.name + ".") and
                      p.name.endswith(".bak"))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One ps at a time changes this include file."""
        self.backup_dir().mkdir(parents=True, exist_ok=True)
        with open(self.backup_dir() / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.ps-tmp-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _backup(self, text: str) -> Path:
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        target = self.backup_dir() / f"{self.path.name}.{stamp}.bak"
        target.write_text(text, encoding="utf-8")
        for old in self.backups()[: -self.router.backups]:
            old.unlink(missing_ok=True)
        return target

    def _restore(self, old_text: str | None) -> None:
        if old_text is None:
            self.path.unlink(missing_ok=True)
        else:
            self._write(old_text)

    def apply(self, text: str, *, dry_run: bool = False) -> ApplyResult:
        """Put `text` in place safely and reload; the old file comes back on any failure."""
        started = time.monotonic()
        if not self.path.parent.is_dir():
            raise BadInput(f"directory of router.include does not exist: {self.path.parent}")
        with self.locked():
            old_text = self.read_text()
            result = ApplyResult(path=str(self.path), changed=old_text != text, created=old_text is None)
            if not result.changed or dry_run:
                return result
            if old_text is not None:
                result.backup = str(self._backup(old_text))
            self._write(text)
            problem = self.test()
            if problem is not None:
                self._restore(old_text)
                raise NginxFailed(f"nginx -t rejected the change, previous file restored: {problem}")
            try:
                before, after = self.reload()
            except (NginxFailed, Unreachable) as exc:
                self._restore(old_text)
                back = ""
                if isinstance(exc, NginxFailed) and self.test() is None:
                    try:
                        self.reload()
                        back = " and reloaded"
                    except (NginxFailed, Unreachable) as again:
                        back = f" (reloading it failed too: {again.message})"
                exc.message = f"{exc.message}; previous file restored{back}"
                exc.args = (exc.message,)
                raise
            result.reloaded = True
            result.workers_before, result.workers_after = before, after
            result.seconds = round(time.monotonic() - started, 4)
            return result


def _nginx_message(stderr: str) -> str:
    """nginx's own complaint: its [emerg]/[alert] lines, without the `nginx: ` prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    serious = [ln for ln in lines if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln] or lines
    text = "; ".join(ln.removeprefix("nginx: ") for ln in serious[:3])
    return text[:500]


def _emergencies(log: Path | None, offset: int) -> str | None:
    """The first `[emerg]` line written to the error log after `offset`."""
    if log is None:
        return None
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            tail = fh.read(65536).decode(errors="replace")
    except OSError:
        return None
    for line in tail.splitlines():
        if "[emerg]" in line:
            return line.partition("[emerg]")[2].strip().partition(": ")[2] or line.strip()
    return None
