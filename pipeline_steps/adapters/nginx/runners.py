"""Where nginx runs: HostRunner (subprocess, pid file, /proc) or ContainerRunner (DockerHost: exec, top,
logs)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline_steps.adapters.nginx.errorlog import ContainerLog, FileLog, LogWatch
from pipeline_steps.adapters.nginx.procs import nginx_tree, parse_top, shutting_down
from pipeline_steps.adapters.proc import children, pid_alive
from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import Unreachable, unreachable

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import ContainerInfo, DockerHost

T = TypeVar("T")
DEFAULT_PID = "/run/nginx.pid"


def nginx_command(router: NginxRouter, *args: str) -> list[str]:
    """The nginx command line with the configured binary, prefix and conf (early errors to stderr)."""
    cmd = [router.binary]
    if router.prefix:
        cmd += ["-p", router.prefix.rstrip("/") + "/"]
    if router.conf:
        cmd += ["-c", router.conf]
    return [*cmd, "-e", "stderr", *args]



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
        return master, {pid: not pid_alive(pid) or shutting_down(pid) for pid in children(master)}

    def log(self) -> LogWatch:
        path = self.error_log()
        return FileLog(path) if path else LogWatch()

    def where(self) -> str:
        return f"nginx (no live master in {self.pid_file()})"


class ContainerRunner(NginxRunner):
    """nginx in a container of a host's Docker engine (the local one by default): `exec`, `top` and `logs`
    through DockerHost (the include's files too when engine-backed: adapters/nginx/files.py)."""

    poll_interval = 0.02

    def __init__(self, router: NginxRouter, host: Host | None = None) -> None:
        super().__init__(router)
        self.name = router.container or ""
        self.host = host or Host(name="local")
        self._client: DockerHost | None = None
        self._container: ContainerInfo | None = None

    def where(self) -> str:
        return f"nginx in container {self.name}"

    def engine(self) -> DockerHost:
        """The host's engine (opened on first use; Unreachable when it does not answer)."""
        if self._client is None:
            from pipeline_steps.adapters.docker_host import open_host

            self._client = open_host(self.host, timeout=30)
        return self._client

    def container(self) -> ContainerInfo:
        """The running container (connects on first use); Unreachable when missing or stopped."""
        if self._container is not None:
            return self._container
        from pipeline_steps.adapters.interfaces import EngineError

        engine = self.engine()
        try:
            found = engine.container(self.name)
        except EngineError as exc:
            raise Unreachable(f"nginx container {self.name}: {_first_line(exc)}") from None
        if found is None:
            raise Unreachable(f"nginx container {self.name} not found on the Docker engine "
                              f"({self.host.endpoint}) (router.container)")
        if not found.running:
            raise Unreachable(f"nginx container {self.name} is not running (status {found.status})")
        self._container = found
        return found

    def ready(self) -> None:
        self.container()

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """fn(*args) on the engine, its failures as one Unreachable line naming the container and `what`."""
        from pipeline_steps.adapters.interfaces import EngineError, EngineGone, NotFoundError

        try:
            return fn(*args, **kw)
        except NotFoundError:
            raise Unreachable(f"nginx container {self.name} is gone ({what})") from None
        except EngineGone:
            raise unreachable(f"Docker engine ({self.host.endpoint})", f"went away during {what}") from None
        except EngineError as exc:
            raise Unreachable(f"nginx container {self.name}: {what} failed: {_first_line(exc)}") from None

    def run(self, *args: str) -> tuple[int, str]:
        container = self.container()
        cmd = nginx_command(self.router, *args)
        code, text = self.call(f"exec {' '.join(cmd[:1] + list(args))}", self.engine().exec, container.id,
                                cmd)
        if code in (126, 127) and ("executable file not found" in text
                                   or "no such file or directory" in text.lower()):
            raise Unreachable(f"nginx binary not found in container {self.name}: {self.router.binary} "
                              f"(router.nginx.binary): {_first_line(text)}")
        return code, text

    def processes(self) -> tuple[int | None, dict[int, bool]]:
        from pipeline_steps.adapters.interfaces import EngineError

        container = self.container()
        try:
            top = self.call("top", self.engine().top, container.id)
        except Unreachable as failure:
            try:
                now = self.engine().container(container.id)
            except EngineError:
                raise failure from None
            if now is None or not now.running:
                return None, {}  # the container (and so its nginx master) stopped
            raise
        return nginx_tree(parse_top({"Titles": list(top.titles), "Processes": [list(r) for r in top.rows]}))

    def log(self) -> LogWatch:
        if self.router.error_log:
            return FileLog(Path(self.router.error_log))
        return ContainerLog(self.engine(), self.container().id)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._container = None


def _first_line(value: object) -> str:
    text = str(value).strip()
    return (text.splitlines()[0] if text else type(value).__name__)[:300]

