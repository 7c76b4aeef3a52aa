"""FakeDockerHost: one host's Docker engine in memory (see the package doc).

About 450 lines on purpose: it is the whole DockerHost interface in one place, method for method beside
docker_sdk.py, so a reader can hold the two side by side.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters.interfaces import (
    AuthResolver,
    ContainerInfo,
    ContainerStats,
    EngineError,
    EngineGone,
    FileRead,
    ImageInfo,
    KeptImage,
    NotFoundError,
    Processes,
    VolumeInfo,
)
from pipeline_steps.config import Host

if TYPE_CHECKING:
    from pipeline_steps.adapters.fakes.services import FakeRegistry

_ids = itertools.count(1)


def _new_id(seed: str) -> str:
    return "sha256:" + hashlib.sha256(f"{seed}:{next(_ids)}".encode()).hexdigest()


@dataclass
class FakeImage:
    id: str
    tags: set[str] = field(default_factory=set)
    repo_digests: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str  # the reference it was created from
    image_id: str
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)
    restart_policy: dict[str, str] = field(default_factory=dict)
    log_config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # run settings as SDK create options
    networks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # joined networks -> aliases
    status: str = "created"
    started_at: float | None = None
    log: list[tuple[float, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content (get_file, put_file, exec)
    dirs: set[str] = field(default_factory=set)  # directories that exist besides files' parents
    inodes: dict[str, int] = field(default_factory=dict)  # path -> inode (a mv or a new file changes it)

    def has_dir(self, path: str) -> bool:
        path = path.rstrip("/") or "/"
        return path == "/" or any(p == path or p.startswith(path + "/") for p in (*self.dirs, *self.files))

    def store(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.inodes[path] = next(_ids)

    def info(self) -> ContainerInfo:
        started = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_at)) + ".000000000Z"
                   if self.started_at else "0001-01-01T00:00:00Z")
        attrs = {
            "Id": self.id, "Name": "/" + self.name, "Image": self.image_id,
            "Config": {"Image": self.image, "Labels": dict(self.labels),
                       "Env": [f"{k}={v}" for k, v in self.env.items()]},
            "HostConfig": {"PortBindings": {k: [{"HostIp": ip, "HostPort": str(port)}]
                                            for k, (ip, port) in self.ports.items()},
                           "RestartPolicy": dict(self.restart_policy) or {"Name": "no"},
                           "LogConfig": {"Type": self.log_config.get("Type", "json-file"),
                                         "Config": dict(self.log_config.get("Config") or {})}},
            "State": {"Status": self.status, "Running": self.status == "running", "StartedAt": started},
            "NetworkSettings": {"Networks": {net: {"Aliases": list(aliases)}
                                             for net, aliases in self.networks.items()}},
        }
        return ContainerInfo(self.id, self.name, self.status, dict(self.labels), attrs)


_REPO_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-/:")
_TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _bad_reference(ref: str) -> str | None:
    """The engine's complaint about a malformed image reference (None: well formed or an image ID)."""
    if ref.startswith("sha256:"):
        return None
    repo, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        repo, tag = ref, "latest"
    if repo and not set(repo) <= _REPO_CHARS:
        return "invalid reference format: repository name must be lowercase"
    if not repo or not tag or not set(tag) <= _TAG_CHARS:
        return "invalid reference format"
    return None


def _overlaps(a: str, b: str) -> bool:
    return a == b or "0.0.0.0" in (a, b) or "::" in (a, b)


class FakeDockerHost:
    """One host's engine in memory (see the module doc for the scripted failures)."""

    def __init__(self, host: Host, registry: FakeRegistry | None = None) -> None:
        self.host = host
        self.registry = registry
        self.images: dict[str, FakeImage] = {}
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, dict[str, str]] = {}  # user-defined networks -> labels
        self.job_runs: Callable[[list[str]], tuple[int | None, list[str]]] = lambda command: (0, [])
        self.fail_start: dict[str, str] = {}
        self.exit_on_start: dict[str, str] = {}
        self.held: dict[tuple[str, int], str] = {}
        self.process_holder: dict[tuple[str, int], str] = {}
        self.bind_test_error: str | None = None
        self.exec_results: dict[tuple[str, ...], tuple[int, str]] = {}
        self.fail_build: dict[str, str] = {}  # tag -> the error its build stops with
        self.processes: dict[str, list[tuple[str, str, str, str]]] = {}  # name -> (uid, pid, ppid, cmd)
        self.reachable = True
        self.gone: set[str] = set()
        self.pulls: list[tuple[str, Mapping[str, str] | None]] = []
        self.timeout = 60.0
        self.closed = 0
        self.named_volumes: dict[str, VolumeInfo] = {}  # the deploy lock's volumes
        # name -> (CPU percent of its limit, memory bytes in use): stats() answers from it, CPU time
        # accumulating at that rate on the real clock; memory limits come from options["mem_limit"]
        self.usage: dict[str, tuple[float, int]] = {}

    # ---------------------------------------------------------------- scripting helpers

    def add_image(self, ref: str, image_id: str | None = None, *, digest: str | None = None,
                  labels: Mapping[str, str] | None = None) -> FakeImage:
        """Tag an image `ref` here (a new one unless image_id names one); digest adds `repo@digest`."""
        image = self.images.get(image_id or "") or FakeImage(image_id or _new_id(ref),
                                                              created=int(time.time()) + next(_ids))
        self.images[image.id] = image
        for other in self.images.values():
            other.tags.discard(ref)
        image.tags.add(ref)
        image.labels.update(labels or {})
        if digest:
            image.repo_digests.add(f"{ref.rpartition(':')[0]}@{digest}")
        return image

    def add_container(self, name: str, image_ref: str, *, labels: Mapping[str, str] | None = None,
                      ports: Mapping[str, tuple[str, int]] | None = None, status: str = "running",
                      env: Mapping[str, str] | None = None) -> FakeContainer:
        """A container made outside ps (or a leftover), in any state."""
        image = self._find_image(image_ref) or self.add_image(image_ref)
        c = FakeContainer(_new_id(name), name, image_ref, image.id, dict(labels or {}), dict(env or {}),
                          dict(ports or {}), status=status,
                          started_at=time.time() if status == "running" else None)
        self.containers[c.id] = c
        return c

    def add_file(self, name: str, path: str, text: str | bytes) -> None:
        """A file in the container now (its directory then exists too)."""
        self._get(name).store(path, text.encode() if isinstance(text, str) else text)

    def write_log(self, name: str, text: str) -> None:
        """The container's process prints `text` now (a line of its logs)."""
        self._get(name).log.append((time.time(), text))

    def named(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def _check(self, call: str) -> None:
        if call in self.gone:
            raise EngineGone(f"('Connection aborted.', ConnectionResetError(104, 'Connection reset by "
                             f"peer')) in {call}")

    def _get(self, name: str) -> FakeContainer:
        c = self.containers.get(name) or self.named(name)
        if c is None:
            raise NotFoundError(f"No such container: {name}")
        return c

    def _find_image(self, ref: str) -> FakeImage | None:
        if ref in self.images:
            return self.images[ref]
        return next((i for i in self.images.values() if ref in i.tags), None)

    def close(self) -> None:
        self.closed += 1

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds

    # ---------------------------------------------------------------- images

    def image(self, ref: str) -> ImageInfo | None:
        self._check("image")
        bad = _bad_reference(ref)
        if bad:
            raise EngineError(f"no such image: {ref}: {bad}")
        found = self._find_image(ref)
        if found is None:
            return None
        return ImageInfo(found.id, tuple(sorted(found.tags)), tuple(sorted(found.repo_digests)),
                         dict(found.labels))

    def pull(self, ref: str, auth: Mapping[str, str] | None) -> ImageInfo:
        self._check("pull")
        self.pulls.append((ref, auth))
        digest, image_id = self._manifest(ref, auth)
        self.add_image(ref, image_id, digest=digest)
        found = self.image(ref)
        assert found is not None
        return found

    def remote_digest(self, ref: str, auth: Mapping[str, str] | None) -> str:
        self._check("remote_digest")
        return self._manifest(ref, auth)[0]

    def _manifest(self, ref: str, auth: Mapping[str, str] | None) -> tuple[str, str]:
        """(digest, image id) of `ref` in the linked registry, which checks `auth` as a real one does."""
        repo, _, tag = ref.rpartition(":")
        if self.registry is None:
            raise EngineError(f'Get "https://{repo.partition("/")[0]}/v2/": dial tcp: connection refused')
        users = self.registry.users
        if users is not None and auth is None:
            raise EngineError(f"Head https://{self.registry.address}/v2/{repo.partition('/')[2]}/manifests/"
                              f"{tag}: no basic auth credentials")
        if users is not None and auth is not None and \
                users.get(auth.get("username", "")) != auth.get("password"):
            raise EngineError(f"Head https://{self.registry.address}/v2/: unauthorized: authentication "
                              "required")
        entry = self.registry.manifests.get((repo.partition("/")[2], tag))
        if entry is None:
            raise EngineError(f"manifest for {ref} not found: manifest unknown")
        return entry

    def repo_images(self, repo: str) -> list[KeptImage]:
        found = [KeptImage(i.id, tuple(sorted(t for t in i.tags if t.startswith(repo + ":"))), i.created)
                 for i in self.images.values() if any(t.startswith(repo + ":") for t in i.tags)]
        return sorted(found, key=lambda image: image.created, reverse=True)

    def tag(self, image_id: str, repo: str, tag: str) -> None:
        if image_id not in self.images:
            raise NotFoundError(f"No such image: {image_id}")
        self.add_image(f"{repo}:{tag}", image_id)

    def untag(self, ref: str) -> None:
        image = self._find_image(ref)
        if image is None:
            raise NotFoundError(f"No such image: {ref}")
        if image.tags == {ref}:
            user = next((c for c in self.containers.values() if c.image_id == image.id), None)
            if user is not None:
                raise EngineError(f'conflict: unable to remove repository reference "{ref}" (must force) - '
                                  f"container {user.id[7:19]} is using its referenced image {image.id[7:19]}")
        image.tags.discard(ref)
        if not image.tags:
            del self.images[image.id]

    def images_in_use(self) -> set[str]:
        return {c.image_id for c in self.containers.values()}

    def build(self, *, path: str, dockerfile: str, tag: str, buildargs: Mapping[str, str],
              labels: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        self._check("build")
        yield {"stream": f"Step 1/1 : FROM scratch ({dockerfile})\n"}
        if tag in self.fail_build:
            yield {"error": self.fail_build[tag], "errorDetail": {"message": self.fail_build[tag]}}
            return
        image = self.add_image(tag, labels=labels)
        yield {"aux": {"ID": image.id}}

    def push(self, repo: str, tag: str, auth: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        self._check("push")
        image = self._find_image(f"{repo}:{tag}")
        if image is None:
            yield {"error": f"tag does not exist: {repo}:{tag}"}
            return
        if self.registry is None:
            yield {"error": "dial tcp: connection refused"}
            return
        digest = self.registry.store(repo.partition("/")[2], tag, image.id)
        image.repo_digests.add(f"{repo}@{digest}")
        yield {"status": "Pushed", "id": image.id[7:19]}
        yield {"aux": {"Tag": tag, "Digest": digest, "Size": 1}}

    def auth_configs(self) -> AuthResolver | None:
        return None

    # ---------------------------------------------------------------- containers

    def container(self, name: str) -> ContainerInfo | None:
        self._check("container")
        c = self.named(name) or self.containers.get(name)
        return c.info() if c else None

    def list_containers(self, labels: Mapping[str, str], *,
                        running_only: bool = False) -> list[ContainerInfo]:
        self._check("list_containers")
        return [c.info() for c in self.containers.values()
                if all(c.labels.get(k) == v for k, v in labels.items())
                and (c.status == "running" or not running_only)]

    def slot_containers(self, app: str) -> list[ContainerInfo]:
        from pipeline_steps.adapters.slots import LABEL_APP

        self._check("slot_containers")
        return self.list_containers({LABEL_APP: app})

    def container_images(self) -> dict[str, str]:
        return {c.name: c.image for c in self.containers.values()}

    def create(self, name: str, image: str, *, labels: Mapping[str, str], environment: Mapping[str, str],
               ports: Mapping[str, tuple[str, int]], restart_policy: Mapping[str, str],
               log_config: Mapping[str, Any], options: Mapping[str, Any] | None = None,
               networks: Sequence[tuple[str, tuple[str, ...]]] = ()) -> ContainerInfo:
        self._check("create")
        if self.named(name):
            raise EngineError(f'Conflict. The container name "/{name}" is already in use')
        found = self._find_image(image)
        if found is None:
            raise NotFoundError(f"No such image: {image}")
        missing = [net for net, _ in networks if net not in self.networks]
        if missing:
            raise NotFoundError(f"network {missing[0]} not found")
        c = FakeContainer(_new_id(name), name, image, found.id, dict(labels), dict(environment),
                          dict(ports), dict(restart_policy), dict(log_config), options=dict(options or {}),
                          networks={net: tuple(aliases) for net, aliases in networks})
        self.containers[c.id] = c
        return c.info()

    def network_exists(self, name: str) -> bool:
        self._check("network_exists")
        return name in self.networks

    def wait(self, name: str, timeout: float) -> int | None:
        """A job container: `job_runs(command)` gives its (exit code or None for "still running", lines)."""
        self._check("wait")
        c = self._get(name)
        code, lines = self.job_runs(list(c.options.get("command") or []))
        c.log.extend((time.time(), line) for line in lines)
        c.status = "running" if code is None else "exited"
        return code

    def follow_logs(self, name: str) -> Iterator[str]:
        self._check("follow_logs")
        c = self._get(name)
        yield from self.job_runs(list(c.options.get("command") or []))[1]

    def create_network(self, name: str, labels: Mapping[str, str]) -> None:
        self._check("create_network")
        if name in self.networks:
            raise EngineError(f"network with name {name} already exists")
        self.networks[name] = dict(labels)

    def _port_reason(self, address: str, port: int, me: str | None = None) -> str | None:
        for (ip, held_port), reason in self.held.items():
            if held_port == port and _overlaps(ip, address):
                return reason
        for other in self.containers.values():
            if other.id != me and other.status == "running" and any(
                    p == port and _overlaps(ip, address) for ip, p in other.ports.values()):
                return f"Bind for {address}:{port} failed: port is already allocated"
        return None

    def start(self, name: str) -> ContainerInfo:
        self._check("start")
        c = self._get(name)
        if c.status == "running":
            return c.info()
        if c.name in self.fail_start and c.started_at is None:  # a new container; a previous one starts
            raise EngineError(self.fail_start[c.name])
        for ip, port in c.ports.values():
            reason = self._port_reason(ip, port, me=c.id)
            if reason:
                raise EngineError(f"driver failed programming external connectivity: {reason}")
        c.status, c.started_at = "running", time.time()
        if c.name in self.exit_on_start:
            c.log.append((time.time(), self.exit_on_start[c.name]))
            c.status = "exited"
        return c.info()

    def stop(self, name: str, timeout: int = 10) -> None:
        self._check("stop")
        c = self._get(name)
        if c.status in ("running", "restarting"):
            c.status = "exited"

    def rename(self, name: str, new_name: str) -> None:
        self._check("rename")
        c = self._get(name)
        if new_name != c.name and self.named(new_name):
            raise EngineError(f'Conflict. The container name "/{new_name}" is already in use')
        c.name = new_name

    def remove(self, name: str) -> None:
        self._check("remove")
        c = self.containers.get(name) or self.named(name)
        if c is not None:
            del self.containers[c.id]

    def logs(self, name: str, *, since: float | None = None, timestamps: bool = False,
             tail: int | None = None) -> str:
        lines = [(t, text) for t, text in self._get(name).log if since is None or t >= since]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        stamp = "%Y-%m-%dT%H:%M:%S"
        return "".join((time.strftime(stamp, time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z " if timestamps
                        else "") + text + "\n" for t, text in lines)

    def exec(self, name: str, cmd: list[str]) -> tuple[int, str]:
        c = self._get(name)
        if c.status != "running":
            raise EngineError(f"container {c.id[7:19]} is not running")
        if tuple(cmd) not in self.exec_results and cmd and cmd[0] in _FILE_COMMANDS:
            return _file_command(c, cmd)
        return self.exec_results.get(tuple(cmd), (0, ""))

    def stats(self, name: str) -> ContainerStats:
        """A sample as `usage[name]` scripts it (CPU time grows at that percent since the start)."""
        self._check("stats")
        c = self._get(name)
        if c.status != "running":
            raise EngineError(f"Container {c.id[7:19]} is not running")
        percent, memory = self.usage.get(c.name, (0.0, 1 << 20))
        cpus = float(c.options.get("nano_cpus") or 0) / 1e9 or 1.0
        now = time.time()
        used = int(percent / 100.0 * cpus * max(0.0, now - (c.started_at or now)) * 1e9)
        limit = c.options.get("mem_limit")
        return ContainerStats(container=c.name, read_at=now, cpu_usage=used, cpu_limit=cpus,
                              memory_usage=memory, memory_limit=int(limit) if limit else None)

    def top(self, name: str) -> Processes:
        self._check("top")
        c = self._get(name)
        if c.status != "running":
            raise EngineError(f"Container {c.id[7:19]} is not running")
        rows = self.processes.get(c.name) or [("root", "1", "0", c.image)]
        return Processes(("UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"),
                         tuple((uid, pid, ppid, "0", "00:00", "?", "00:00:00", cmd)
                               for uid, pid, ppid, cmd in rows))

    def published_ports(self) -> list[tuple[str, str, str, int]]:
        return [(c.name, c.image, ip, port) for c in self.containers.values() if c.status == "running"
                for ip, port in c.ports.values()]

    def try_bind(self, image: str, address: str, port: int, name: str,
                 labels: Mapping[str, str] | None = None) -> str | None:
        from pipeline_steps.adapters.docker_host import BindTestError

        if self.bind_test_error:
            raise BindTestError(self.bind_test_error)
        if self._find_image(image) is None:
            raise BindTestError(f"No such image: {image}")
        return self._port_reason(address, port)

    def port_holder(self, address: str, port: int) -> str | None:
        for (ip, held_port), text in self.process_holder.items():
            if held_port == port and _overlaps(ip, address):
                return text
        return None

    # ---------------------------------------------------------------- files in a container

    def get_file(self, name: str, path: str) -> bytes | None:
        self._check("get_file")
        return self._get(name).files.get(path)

    def list_dir(self, name: str, path: str) -> list[str] | None:
        self._check("list_dir")
        code, listing = _file_command(self._get(name), ["ls", "-1", path])
        return listing.split() if code == 0 else None

    def put_file(self, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._check("put_file")
        c = self._get(name)
        directory = path.rpartition("/")[0] or "/"
        if not c.has_dir(directory):
            raise NotFoundError(f"Could not find the file {directory} in container {name}")
        c.store(path, bytes(data))

    def read_file(self, name: str, path: str, offset: int = 0) -> FileRead | None:
        self._check("read_file")
        c = self._get(name)
        data = c.files.get(path)
        if data is None:
            return None
        return FileRead(f"0:{c.inodes.get(path, 0)}", len(data), data[offset:])

    # ---------------------------------------------------------------- named volumes (the deploy lock)

    def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        self._check("create_volume")
        if name not in self.named_volumes:
            self.named_volumes[name] = VolumeInfo(name, dict(labels),
                                                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return self.named_volumes[name]

    def volume(self, name: str) -> VolumeInfo | None:
        self._check("volume")
        return self.named_volumes.get(name)

    def volumes(self, labels: Mapping[str, str]) -> list[VolumeInfo]:
        self._check("volumes")
        return [v for v in self.named_volumes.values()
                if all(v.labels.get(k) == value for k, value in labels.items())]

    def remove_volume(self, name: str) -> None:
        self._check("remove_volume")
        self.named_volumes.pop(name, None)


_FILE_COMMANDS = ("mv", "rm", "mkdir", "ls", "test")


def _file_command(c: FakeContainer, cmd: list[str]) -> tuple[int, str]:
    """The few file commands ps execs in a router container (EngineFiles), over the container's files."""
    tool, args = cmd[0], [a for a in cmd[1:] if not a.startswith("-")]
    if tool == "mv" and len(args) == 2:
        src, dst = args
        if src not in c.files:
            return 1, f"mv: can't rename '{src}': No such file or directory\n"
        c.files[dst] = c.files.pop(src)
        c.inodes[dst] = c.inodes.pop(src, next(_ids))
        return 0, ""
    if tool == "rm":
        for path in args:
            c.files.pop(path, None)
            c.inodes.pop(path, None)
        return 0, ""
    if tool == "mkdir":
        c.dirs.update(a.rstrip("/") for a in args)
        return 0, ""
    if tool == "test" and cmd[1:2] == ["-d"]:
        return (0 if c.has_dir(cmd[2]) else 1), ""
    if tool == "test" and cmd[1:2] == ["-f"]:
        return (0 if cmd[2] in c.files else 1), ""
    if tool == "ls" and len(args) == 1:
        directory = args[0].rstrip("/")
        if not c.has_dir(directory):
            return 1, f"ls: {directory}: No such file or directory\n"
        inside = [f[len(directory) + 1:] for f in (*c.files, *c.dirs) if f.startswith(directory + "/")]
        names = sorted({f.split("/")[0] for f in inside})
        return 0, "".join(n + "\n" for n in names)
    return 127, f"exec: {tool}: unsupported in the fake\n"
