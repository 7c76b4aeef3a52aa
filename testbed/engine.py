"""A Docker engine to test against: the one that answers, or a dockerd we start and stop ourselves.

`run_engine()` is the pytest session's: when no engine answers, one dockerd (the machine's bed engine,
under <tmp>/ps-bed-engine) serves every process of every test run on this machine: the first that needs
it starts it under a lock and writes a marker (base_url, pid, root); the others reuse it. Each process
using it holds a shared lock on its users file; a run's top process, at its end (`stop_run_engine()`),
stops it when no process holds that lock any more, so two runs at once share one engine as they share a
machine's own dockerd. The run is named by PS_TEST_RUN, which `begin_run()` sets in the top process and
its workers inherit.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.wait import until


def _answers(base_url: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@dataclass
class Engine:
    """A running Docker engine reachable at base_url."""

    base_url: str
    process: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=120)

    def stop(self) -> None:
        """Stop the dockerd we started (a pre-existing engine is left alone)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        self.cleanup()

    def cleanup(self) -> None:
        """Unmount and remove the data of a stopped dockerd we started (its root)."""
        if self.root is not None:
            # dockerd leaves mounts behind (overlays under data, the default netns under exec)
            for mounted in ("data", "exec/netns/default", "exec"):
                subprocess.run(["umount", "-R", "-l", str(self.root / mounted)], capture_output=True,
                               check=False)
            shutil.rmtree(self.root, ignore_errors=True)


def start_dockerd(root: Path, *, bridge: str | None = None, bip: str | None = None,
                  timeout: float = 60.0, extra_args: Sequence[str] = ()) -> Engine:
    """Start dockerd with its own socket, data root and exec root under `root`."""
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    args = ["dockerd", "--host", f"unix://{sock}", "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid")]
    if bridge:
        args += ["--bridge", bridge]
    if bip:
        args += ["--bip", bip]
    args += list(extra_args)
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(base_url=f"unix://{sock}", process=proc, root=root)
    def up() -> bool:
        if proc.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dockerd exited: {tail}")
        return sock.exists() and _answers(engine.base_url)

    if until(up, timeout, 0.2):
        return engine
    engine.stop()
    raise RuntimeError("dockerd did not answer in time")


@contextmanager
def private_bridge() -> Iterator[str]:
    """A Linux bridge of its own for a dockerd we start (psbr<random>, up, on a free 10.x.y.1/24), deleted
    at the end. The subnet is picked and taken under a lock, so parallel workers never pick the same."""
    import random

    bridge = f"psbr{uuid.uuid4().hex[:8]}"
    with file_lock(Path(tempfile.gettempdir()) / "ps-bed-locks" / "subnets.lock"):
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        free = [c for c in (f"10.{random.randint(200, 250)}.{random.randint(0, 255)}" for _ in range(100))
                if f"{c}." not in routes]
        if not free:
            raise RuntimeError("no free private /24 for a bridge")
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "addr", "add", f"{free[0]}.1/24", "dev", bridge], check=True,
                           capture_output=True)
            subprocess.run(["ip", "link", "set", bridge, "up"], check=True, capture_output=True)
        except BaseException:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            raise
    try:
        yield bridge
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def _answering() -> Engine | None:
    for url in (os.environ.get("DOCKER_HOST") or "", "unix:///var/run/docker.sock"):
        if url and _answers(url):
            return Engine(base_url=url)
    return None


def ensure_engine() -> Engine:
    """The engine that answers (DOCKER_HOST or the default socket), else one we start (and stop)."""
    found = _answering()
    if found is not None:
        return found
    root = Path(tempfile.mkdtemp(prefix="ps-bed-dockerd-"))
    return start_dockerd(root)


# ---------------------------------------------------------------- one bed engine for every run (xdist)


RUN_ENV = "PS_TEST_RUN"  # "<pid of the run's top process>-<random>"
ENGINE_DIR_ENV = "PS_BED_ENGINE_DIR"  # where the machine's bed engine lives (default: <tmp>/ps-bed-engine)
_users: dict[Path, Any] = {}  # engine dir -> this process's shared lock on its users file (held until exit)


def begin_run() -> str:
    """Name this test run unless a parent process (the xdist controller) already did; returns its id."""
    if not os.environ.get(RUN_ENV):
        os.environ[RUN_ENV] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.environ[RUN_ENV]


def is_run_top() -> bool:
    """Whether this process named the run (and so stops what the run started, at its end)."""
    return os.environ.get(RUN_ENV, "").split("-")[0] == str(os.getpid())


def engine_dir() -> Path:
    """The directory of the machine's bed engine: its lock, users file, marker and dockerd root."""
    path = Path(os.environ.get(ENGINE_DIR_ENV) or Path(tempfile.gettempdir()) / "ps-bed-engine")
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created) for the block: one process of all at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_engine(start: Callable[[Path], Engine] | None = None, *, look: bool = True) -> Engine:
    """The engine that answers, else the machine's bed engine: one dockerd that every process of every
    test run on this machine shares, started by the first that asks (`start(root)`, default
    start_dockerd; `look=False` skips looking for an answering engine).

    One engine for all, as when the machine's own dockerd answers: two dockerds of two runs would both
    take docker0 and hand out the same container addresses on it. Each process that uses it holds a shared
    lock on its users file until it exits; stop_run_engine stops it when no process holds one any more.
    The Engine returned never stops the shared dockerd itself."""
    found = _answering() if look else None
    if found is not None:
        return found
    here = engine_dir()
    with file_lock(here / "engine.lock"):
        if here not in _users:  # taken under the lock: a stop checking for users sees this process
            users = open(here / "users", "a")  # noqa: SIM115 - held (locked) as long as this process lives
            fcntl.flock(users, fcntl.LOCK_SH)
            _users[here] = users
        marker = here / "engine.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            if _answers(info["base_url"]):
                return Engine(base_url=info["base_url"])
            _stop_marked(info)  # a bed engine left behind by a killed run, not answering: gone for good
            marker.unlink()
        started = (start or start_dockerd)(here / f"dockerd-{uuid.uuid4().hex[:8]}")
        assert started.process is not None
        marker.write_text(json.dumps({"base_url": started.base_url, "pid": started.process.pid,
                                      "root": str(started.root)}))
        return Engine(base_url=started.base_url)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _stop_marked(info: dict[str, Any]) -> None:
    """Stop the bed dockerd a marker names (by its pid) and remove its root."""
    pid = int(info["pid"])
    with _suppress():
        os.kill(pid, signal.SIGTERM)
    if not until(lambda: _gone(pid), 30, 0.2):
        with _suppress():
            os.kill(pid, signal.SIGKILL)
    Engine(base_url=info["base_url"], process=None, root=Path(info["root"])).cleanup()


def stop_run_engine() -> None:
    """In the run's top process: stop the bed engine unless a process of this or another run still uses
    it (holds its users lock); the last run to end stops it."""
    if not is_run_top():
        return
    here = engine_dir()
    with file_lock(here / "engine.lock"):
        mine = _users.pop(here, None)
        if mine is not None:
            mine.close()  # this process is done with it
        marker = here / "engine.json"
        if not marker.exists():
            return
        with open(here / "users", "a") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process (of another run) still uses it
            _stop_marked(json.loads(marker.read_text()))
            marker.unlink()


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- helpers for tests on any engine


def run_port_holder(client: Any, image: str, address: str, port: int, name: str) -> Any:
    """A running container of `image` on that engine publishing `address:port` (its own port 80).

    Labelled `pipeline-steps.test=1` only (no app label): ps must treat it as somebody else's.
    """
    return client.containers.run(image, detach=True, name=name, ports={"80/tcp": (address, port)},
                                 labels={"pipeline-steps.test": "1"})


def broken_entrypoint_image(client: Any, base: str, tag: str) -> str:
    """Tag `tag`: `base` whose entrypoint does not exist, so every start of it fails in the engine."""
    import io

    dockerfile = f'FROM {base}\nENTRYPOINT ["/no/such/entrypoint"]\n'.encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    return str(image.id)


def wait_answer(url: str, timeout: float = 20.0, **headers: str) -> Any:
    """The first 2xx answer of `url` whose headers include `headers` (X_Slot= -> X-Slot), or None.

    Polls until the deadline: a container that was just (re)started may not listen yet.
    """
    import requests

    want = {k.replace("_", "-"): v for k, v in headers.items()}

    def answer() -> Any:
        try:
            got = requests.get(url, timeout=2)
            return got if got.ok and all(got.headers.get(k) == v for k, v in want.items()) else None
        except requests.RequestException:
            return None

    return until(answer, timeout, 0.1)
