"""Safe changes to the nginx include file ps owns: backup, `nginx -t`, atomic rename, reload, confirm.

`nginx -s reload` exits 0 even when the master cannot apply the new config (a bind failure, say), so a
reload counts only when the master's worker processes were replaced and the error log shows no
`[emerg]` since the signal. Any failure puts the previous file back (and reloads back), so nginx is
never left with a config that fails `nginx -t`.

nginx runs either on this machine (router.nginx.prefix/conf) or in a container (router.container):
then the include file is still written here (the host side of a bind mount) while `nginx -t` and
`nginx -s reload` run through the Docker API (`exec`), the workers are read with `top` and `[emerg]`
lines come from the container's logs (or router.nginx.error_log when the log is bind-mounted here).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters.proc import children, pid_alive
from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import BadInput, CheckFailed, PsError, Unreachable

if TYPE_CHECKING:
    import docker

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


def nginx_command(router: NginxRouter, *args: str) -> list[str]:
    """The nginx command line with the configured binary, prefix and conf (early errors to stderr)."""
    cmd = [router.binary]
    if router.prefix:
        cmd += ["-p", router.prefix.rstrip("/") + "/"]
    if router.conf:
        cmd += ["-c", router.conf]
    return [*cmd, "-e", "stderr", *args]


def _shutting_down(pid: int) -> bool:
    """True when an nginx worker's title says it is shutting down (it no longer accepts)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"shutting down" in fh.read()
    except OSError:
        return True


# ---------------------------------------------------------------- where [emerg] lines appear


class LogWatch:
    """Where nginx writes errors: `mark()` before a reload, `failure_since(mark)` says why nginx gave up."""

    def mark(self) -> object:
        return None

    def failure_since(self, mark: object) -> str | None:
        return None


class FileLog(LogWatch):
    """An error log file on this machine (host nginx, or a log directory bind-mounted from a container)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> object:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def failure_since(self, mark: object) -> str | None:
        offset = mark if isinstance(mark, int) else 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                tail = fh.read(65536).decode(errors="replace")
        except OSError:
            return None
        return reload_failure(tail.splitlines())


class ContainerLog(LogWatch):
    """The container's stderr/stdout through the Docker API, cut at the engine's own timestamps."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def _lines(self, **kw: Any) -> list[str]:
        import docker.errors

        try:
            raw = self.container.logs(stdout=True, stderr=True, timestamps=True, **kw)
        except docker.errors.DockerException:
            return []  # a logging driver that cannot be read back: the worker check still decides
        return bytes(raw).decode(errors="replace").splitlines()

    def mark(self) -> object:
        lines = self._lines(tail=1)
        return parse_log_timestamp(lines[-1].partition(" ")[0]) if lines else None

    def failure_since(self, mark: object) -> str | None:
        if isinstance(mark, int):
            lines = self._lines(since=max(mark // 1_000_000_000, 1))
        else:
            lines = self._lines()
        return reload_failure(log_lines_after(lines, mark if isinstance(mark, int) else None))


def parse_log_timestamp(stamp: str) -> int | None:
    """Docker's RFC 3339 log timestamp (`2024-05-01T10:00:00.123456789Z`) as nanoseconds since the epoch."""
    stamp = stamp.strip()
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    if fraction and not fraction.isdigit():
        return None
    try:
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    epoch = int((seconds - datetime(1970, 1, 1)).total_seconds())
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return epoch * 1_000_000_000 + nanos


def log_lines_after(lines: Sequence[str], mark: int | None) -> list[str]:
    """The messages of timestamped log lines written strictly after `mark` (all when mark is None)."""
    found: list[str] = []
    for line in lines:
        stamp, _, message = line.partition(" ")
        at = parse_log_timestamp(stamp)
        if at is None:
            continue
        if mark is None or at > mark:
            found.append(message)
    return found


def _emerg_words(line: str) -> str:
    return line.partition("[emerg]")[2].strip().partition(": ")[2] or line.strip()


def reload_failure(lines: Sequence[str]) -> str | None:
    """Why nginx gave up a reload, in its own words, or None while it has not (yet) given up.

    A `bind() ... failed (98: Address already in use)` is not final: nginx tries again every 500 ms,
    five times, and only `still could not bind()` ends the attempt. Any other `[emerg]` ends it at once.
    """
    first_bind: str | None = None
    for line in lines:
        if "[emerg]" not in line:
            continue
        words = _emerg_words(line)
        if words.startswith("bind() to ") and "(98:" in words:
            first_bind = first_bind or words
        elif words.startswith("still could not bind()"):
            return first_bind or words
        else:
            return words
    return None


# ---------------------------------------------------------------- the processes of a container


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


# ---------------------------------------------------------------- where nginx runs


class NginxRunner:
    """How to run nginx commands and see its processes; HostRunner or ContainerRunner."""

    poll_interval = 0.005

    def __init__(self, router: NginxRouter) -> None:
        self.router = router

    def where(self) -> str:
        """Where nginx runs, for messages."""
        return "nginx"

    def ready(self) -> None:
        """Raise Unreachable when nginx cannot be driven at all (before anything is written)."""

    def run(self, *args: str) -> tuple[int, str]:
        """Run nginx with `args`; (exit code, what it printed)."""
        raise NotImplementedError

    def processes(self) -> tuple[int | None, dict[int, bool]]:
        """The live master PID (None when gone) and its workers -> shutting down."""
        raise NotImplementedError

    def log(self) -> LogWatch:
        return LogWatch()

    def close(self) -> None:
        """Release what the runner holds (a Docker client)."""


class HostRunner(NginxRunner):
    """nginx on this machine: subprocess, its pid file and /proc."""

    def __init__(self, router: NginxRouter) -> None:
        super().__init__(router)
        self._main: dict[str, str] | None = None

    def run(self, *args: str) -> tuple[int, str]:
        try:
            done = subprocess.run(nginx_command(self.router, *args), capture_output=True, text=True,
                                  timeout=30, check=False)
        except FileNotFoundError:
            raise Unreachable(f"nginx binary not found: {self.router.binary} (router.nginx.binary)") from None
        except subprocess.TimeoutExpired:
            raise Unreachable("nginx did not answer within 30s") from None
        return done.returncode, done.stderr

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
        try:
            pid = int(self.pid_file().read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def processes(self) -> tuple[int | None, dict[int, bool]]:
        master = self.master_pid()
        if master is None:
            return None, {}
        return master, {pid: not pid_alive(pid) or _shutting_down(pid) for pid in children(master)}

    def log(self) -> LogWatch:
        path = self.error_log()
        return FileLog(path) if path else LogWatch()

    def where(self) -> str:
        return f"nginx (no live master in {self.pid_file()})"


class ContainerRunner(NginxRunner):
    """nginx in a container of the local Docker engine: `exec`, `top` and `logs` through the SDK."""

    poll_interval = 0.02

    def __init__(self, router: NginxRouter, host: Host | None = None) -> None:
        super().__init__(router)
        self.name = router.container or ""
        self.host = host or Host(name="local")
        self._client: docker.DockerClient | None = None
        self._container: Any = None

    def where(self) -> str:
        return f"nginx in container {self.name}"

    def container(self) -> Any:
        """The running container (connects on first use); Unreachable when missing or stopped."""
        if self._container is not None:
            return self._container
        import docker.errors

        from pipeline_steps.adapters.docker_host import connect

        if self._client is None:
            self._client = connect(self.host, timeout=30)
        try:
            found = self._client.containers.get(self.name)
        except docker.errors.NotFound:
            raise Unreachable(f"nginx container {self.name} not found on the Docker engine "
                              f"({self.host.endpoint}) (router.container)") from None
        except docker.errors.DockerException as exc:
            raise Unreachable(f"nginx container {self.name}: {_first_line(exc)}") from None
        if found.status != "running":
            raise Unreachable(f"nginx container {self.name} is not running (status {found.status})")
        self._container = found
        return found

    def ready(self) -> None:
        self.container()

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        import docker.errors

        from pipeline_steps.adapters.docker_host import is_unreachable

        try:
            return fn(*args, **kw)
        except docker.errors.NotFound:
            raise Unreachable(f"nginx container {self.name} is gone ({what})") from None
        except docker.errors.DockerException as exc:
            raise Unreachable(f"nginx container {self.name}: {what} failed: {_first_line(exc)}") from None
        except Exception as exc:
            if is_unreachable(exc):
                raise Unreachable(f"Docker engine ({self.host.endpoint}) went away during {what}") from None
            raise

    def run(self, *args: str) -> tuple[int, str]:
        container = self.container()
        cmd = nginx_command(self.router, *args)
        done = self._call(f"exec {' '.join(cmd[:1] + list(args))}", container.exec_run, cmd, demux=True)
        out, err = done.output if isinstance(done.output, tuple) else (done.output, None)
        text = b"".join(part for part in (err, out) if part).decode(errors="replace")
        if done.exit_code in (126, 127) and ("executable file not found" in text
                                             or "no such file or directory" in text.lower()):
            raise Unreachable(f"nginx binary not found in container {self.name}: {self.router.binary} "
                              f"(router.nginx.binary): {_first_line(text)}")
        return int(done.exit_code if done.exit_code is not None else 1), text

    def processes(self) -> tuple[int | None, dict[int, bool]]:
        import docker.errors

        container = self.container()
        try:
            top = self._call("top", container.top)
        except Unreachable as failure:
            try:
                container.reload()
                running = container.status == "running"
            except docker.errors.NotFound:
                running = False
            except Exception:
                raise failure from None
            if not running:
                return None, {}  # the container (and so its nginx master) stopped
            raise
        return nginx_tree(parse_top(top))

    def log(self) -> LogWatch:
        if self.router.error_log:
            return FileLog(Path(self.router.error_log))
        return ContainerLog(self.container())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._container = None


def _first_line(value: object) -> str:
    text = str(value).strip()
    return (text.splitlines()[0] if text else type(value).__name__)[:300]


# ---------------------------------------------------------------- the include file and its reloads


class NginxControl:
    """Reads, tests, writes and reloads the ps-owned include of an nginx here or in a container."""

    def __init__(self, router: NginxRouter, *, confirm_timeout: float = 5.0,
                 docker_host: Host | None = None) -> None:
        self.router = router
        self.path = Path(router.include)
        self.confirm_timeout = confirm_timeout
        self.runner: NginxRunner = (ContainerRunner(router, docker_host) if router.container
                                    else HostRunner(router))

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

    def master_pid(self) -> int | None:
        """The running master's PID (as this machine's or the Docker host's kernel numbers it), or None."""
        return self.runner.processes()[0]

    def workers(self) -> set[int]:
        """Current children of the master."""
        return set(self.runner.processes()[1])

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
        while True:
            emerg = log.failure_since(mark)
            if emerg:
                raise NginxFailed(f"nginx could not apply the new config: {emerg}")
            now_master, now = runner.processes()
            if now_master != master:
                raise NginxFailed("nginx master exited during the reload")
            fresh = set(now) - before
            if fresh:
                # the old workers stop accepting once they say "shutting down" (or are gone)
                if all(now[pid] for pid in before & set(now)) or time.monotonic() > deadline:
                    return sorted(before), sorted(fresh)
            if time.monotonic() > deadline:
                raise NginxFailed(f"nginx did not replace its workers within {self.confirm_timeout:g}s "
                                  "after the reload signal")
            time.sleep(runner.poll_interval)

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
        try:
            with self.locked():
                old_text = self.read_text()
                result = ApplyResult(path=str(self.path), changed=old_text != text,
                                     created=old_text is None)
                if not result.changed or dry_run:
                    return result
                self.runner.ready()  # nginx (or its container) unreachable: nothing written
                if self.runner.processes()[0] is None:
                    raise Unreachable(f"{self.runner.where()} is not running: nothing was changed; start "
                                      f"nginx (`ps router init` writes {self.path.name} for a first start)")
                if old_text is not None:
                    result.backup = str(self._backup(old_text))
                self._write(text)
                try:
                    problem = self.test()
                except Unreachable as exc:
                    self._restore(old_text)
                    raise _annotated(exc, "; previous file restored") from None
                if problem is not None:
                    self._restore(old_text)
                    raise NginxFailed(f"nginx -t rejected the change, previous file restored: {problem}")
                try:
                    before, after = self.reload()
                except (NginxFailed, Unreachable) as exc:
                    self._restore(old_text)
                    raise _annotated(exc, f"; previous file restored{self._reload_back(exc)}") from None
                result.reloaded = True
                result.workers_before, result.workers_after = before, after
                result.seconds = round(time.monotonic() - started, 4)
                return result
        finally:
            self.close()

    def install(self, text: str, *, force: bool = False) -> InstallResult:
        """Write a first include: with nginx running, the safe apply; without, write it and `nginx -t`.

        An existing file is left alone unless `force`. Without a running nginx the file is written
        atomically (0644) and tested with `nginx -t` when the binary (and router.nginx.conf, if set) are
        there; a failing test removes it again (NginxFailed).
        """
        if not self.path.parent.is_dir():
            raise BadInput(f"directory of router.include does not exist: {self.path.parent}")
        old_text = self.read_text()
        if old_text is not None and not force:
            return InstallResult(path=str(self.path), written=False, running=False, note="already there")
        if self._running():
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

    def _running(self) -> bool:
        """True when an nginx master runs (a missing or stopped nginx container counts as not running)."""
        try:
            self.runner.ready()
            return self.runner.processes()[0] is not None
        except Unreachable:
            return False

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
            return " and reloaded"
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


