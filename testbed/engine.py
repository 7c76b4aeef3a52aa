"""A Docker engine to test against: the one that answers, or a dockerd we start and stop ourselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
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


def ensure_engine() -> Engine:
    """The engine that answers (DOCKER_HOST or the default socket), else one we start."""
    candidates = [os.environ.get("DOCKER_HOST") or "", "unix:///var/run/docker.sock"]
    for url in candidates:
        if url and _answers(url):
            return Engine(base_url=url)
    root = Path(tempfile.mkdtemp(prefix="ps-bed-dockerd-"))
    return start_dockerd(root)


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
