"""DockerHost over the Docker SDK: with docker_host.py the only modules of ps that call the SDK for steps.

Every call's SDK errors become the interface's: NotFoundError, EngineError (the engine's explanation),
EngineGone (connection refused/reset or a timeout mid-call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters import docker_host
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
    import docker


EXEC_EXIT_WAIT = 10.0  # seconds an exec'd command's exit code may take to be recorded after its output


@contextmanager
def _calls() -> Iterator[None]:
    """Translate SDK and transport errors into the interface's."""
    import docker.errors
    import requests

    try:
        yield
    except (docker.errors.NotFound, docker.errors.ImageNotFound) as exc:
        raise NotFoundError(str(exc.explanation or exc)) from None
    except docker.errors.APIError as exc:
        raise EngineError(str(exc.explanation or exc)) from None
    except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
        raise EngineGone(str(exc)) from None


def _image(image: Any) -> ImageInfo:
    attrs = image.attrs or {}
    return ImageInfo(id=str(image.id), tags=tuple(attrs.get("RepoTags") or ()),
                     repo_digests=tuple(attrs.get("RepoDigests") or ()),
                     labels=dict((attrs.get("Config") or {}).get("Labels") or {}))


def _container(c: Any) -> ContainerInfo:
    return ContainerInfo(id=str(c.id), name=str(c.name), status=str(c.status), labels=dict(c.labels or {}),
                         attrs=c.attrs)


class SdkDockerHost:
    """A connected host engine (see docker_host.connect for the endpoint kinds)."""

    def __init__(self, host: Host, client: docker.DockerClient) -> None:
        self.host = host
        self.client = client

    @classmethod
    def open(cls, host: Host, timeout: float = 60.0) -> SdkDockerHost:
        return cls(host, docker_host.connect(host, timeout))

    def close(self) -> None:
        self.client.close()

    def set_timeout(self, seconds: float) -> None:
        self.client.api.timeout = seconds

    # ---------------------------------------------------------------- images

    def image(self, ref: str) -> ImageInfo | None:
        try:
            with _calls():
                return _image(self.client.images.get(ref))
        except NotFoundError:
            return None

    def pull(self, ref: str, auth: Mapping[str, str] | None) -> ImageInfo:
        repo, _, tag = ref.rpartition(":")
        with _calls():
            return _image(self.client.images.pull(repo, tag=tag, auth_config=dict(auth) if auth else None))

    def remote_digest(self, ref: str, auth: Mapping[str, str] | None) -> str:
        with _calls():
            data = self.client.images.get_registry_data(ref, auth_config=dict(auth) if auth else None)
        return str(data.id)

    def repo_images(self, repo: str) -> list[KeptImage]:
        with _calls():
            return docker_host.repo_images(self.client, repo)

    def tag(self, image_id: str, repo: str, tag: str) -> None:
        with _calls():
            self.client.api.tag(image_id, repo, tag=tag)

    def untag(self, ref: str) -> None:
        with _calls():
            self.client.images.remove(ref)

    def images_in_use(self) -> set[str]:
        with _calls():  # the raw list: inspecting each container races with removals meanwhile
            return {str(c.get("ImageID")) for c in self.client.api.containers(all=True)}

    def build(self, *, path: str, dockerfile: str, tag: str, buildargs: Mapping[str, str],
              labels: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        with _calls():
            yield from self.client.api.build(path=path, dockerfile=dockerfile, tag=tag,
                                             buildargs=dict(buildargs), labels=dict(labels), rm=True,
                                             forcerm=True, decode=True)

    def push(self, repo: str, tag: str, auth: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        with _calls():
            yield from self.client.api.push(repo, tag=tag, stream=True, decode=True,
                                            auth_config=dict(auth) if auth else None)

    def auth_configs(self) -> AuthResolver | None:
        return getattr(self.client.api, "_auth_configs", None)

    # ---------------------------------------------------------------- containers

    def container(self, name: str) -> ContainerInfo | None:
        try:
            with _calls():
                return _container(self.client.containers.get(name))
        except NotFoundError:
            return None

    def list_containers(self, labels: Mapping[str, str], *,
                        running_only: bool = False) -> list[ContainerInfo]:
        with _calls():
            return [_container(c) for c in self.client.containers.list(
                all=not running_only, ignore_removed=True,
                filters={"label": [f"{k}={v}" for k, v in labels.items()]})]

    def slot_containers(self, app: str) -> list[ContainerInfo]:
        from pipeline_steps.adapters.slots import LABEL_APP

        return self.list_containers({LABEL_APP: app})

    def container_images(self) -> dict[str, str]:
        with _calls():
            return {str(name).lstrip("/"): str(row.get("Image") or "?")
                    for row in self.client.api.containers(all=True) for name in row.get("Names") or []}

    def create(self, name: str, image: str, *, labels: Mapping[str, str], environment: Mapping[str, str],
               ports: Mapping[str, tuple[str, int]], restart_policy: Mapping[str, str],
               log_config: Mapping[str, Any], options: Mapping[str, Any] | None = None,
               networks: Sequence[tuple[str, tuple[str, ...]]] = ()) -> ContainerInfo:
        extra = dict(options or {})
        if networks:  # the first network at create (with its aliases), the others joined before start
            first, aliases = networks[0]
            extra["network"] = first
            extra["networking_config"] = {
                first: self.client.api.create_endpoint_config(aliases=list(aliases) or None)}
        with _calls():
            c = self.client.containers.create(image, name=name, labels=dict(labels),
                                              environment=dict(environment), ports=dict(ports),
                                              restart_policy=dict(restart_policy),
                                              log_config=dict(log_config), **extra)
            try:
                for net, more in networks[1:]:
                    self.client.api.connect_container_to_network(c.id, net, aliases=list(more) or None)
            except Exception:
                self.client.api.remove_container(c.id, force=True)
                raise
            return _container(self.client.containers.get(c.id))

    def network_exists(self, name: str) -> bool:
        with _calls():
            return any(n.get("Name") == name for n in self.client.api.networks(names=[name]))

    def wait(self, name: str, timeout: float) -> int | None:
        """The container's exit code once it exits, None if it still runs after `timeout` seconds."""
        try:
            with _calls():
                return int(self.client.api.wait(name, timeout=max(1, int(timeout + 0.999)))["StatusCode"])
        except EngineGone:  # the wait's read timed out; a gone engine fails the inspect below too
            with _calls():
                state = self.client.api.inspect_container(name).get("State") or {}
            return None if state.get("Running") else int(state.get("ExitCode") or 0)

    def follow_logs(self, name: str) -> Iterator[str]:
        """Output lines (stdout and stderr) as the container writes them, until it exits."""
        pending = b""
        with _calls():
            stream = self.client.api.logs(name, stream=True, follow=True)
        for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")

    def create_network(self, name: str, labels: Mapping[str, str]) -> None:
        with _calls():
            self.client.api.create_network(name, driver="bridge", labels=dict(labels), check_duplicate=True)

    def start(self, name: str) -> ContainerInfo:
        with _calls():
            self.client.api.start(name)
            return _container(self.client.containers.get(name))

    def stop(self, name: str, timeout: int = 10) -> None:
        with _calls():
            self.client.api.stop(name, timeout=timeout)

    def rename(self, name: str, new_name: str) -> None:
        with _calls():
            self.client.api.rename(name, new_name)

    def remove(self, name: str) -> None:
        try:
            with _calls():
                self.client.api.remove_container(name, force=True)
        except NotFoundError:
            pass

    def logs(self, name: str, *, since: float | None = None, timestamps: bool = False,
             tail: int | None = None) -> str:
        kw: dict[str, Any] = {"timestamps": timestamps, "tail": "all" if tail is None else tail}
        if since is not None:
            kw["since"] = since
        with _calls():
            return bytes(self.client.api.logs(name, **kw)).decode(errors="replace")

    def exec(self, name: str, cmd: list[str]) -> tuple[int, str]:
        with _calls():
            code, output, _ = self._run(self.client.containers.get(name).id, name, cmd, demux=False)
        return code, output.decode(errors="replace")

    def _run(self, container_id: str, name: str, cmd: list[str], *, demux: bool) -> tuple[int, bytes, bytes]:
        """Run `cmd` in the container: its exit code, its output (stdout and stderr apart with `demux`,
        else both in the first). The one place execs are made, inside the caller's `_calls()`."""
        from pipeline_steps.waiting import poll_until

        api = self.client.api
        exec_id = api.exec_create(container_id, cmd)["Id"]
        got = api.exec_start(exec_id, demux=demux)
        out, err = got if demux else (got, None)
        # the output ends when the command closes it; its exit code may be recorded a moment later
        # (inspect says Running, ExitCode None): wait for it rather than take None for success
        code = poll_until(lambda: api.exec_inspect(exec_id).get("ExitCode"), timeout=EXEC_EXIT_WAIT,
                          interval=0.01)
        if code is None:
            raise EngineError(f"{cmd[0]} in container {name}: no exit code after {EXEC_EXIT_WAIT:g} s")
        return int(code), bytes(out or b""), bytes(err or b"")

    def top(self, name: str) -> Processes:
        with _calls():
            top = self.client.api.top(name, ps_args="-ef")
        return Processes(tuple(str(t) for t in top.get("Titles") or ()),
                         tuple(tuple(str(c) for c in row) for row in top.get("Processes") or ()))

    def stats(self, name: str) -> ContainerStats:
        """`docker stats --no-stream` of one container: one sample at once (one-shot where the engine
        has it, API 1.41+), its limits from the inspect document."""
        import docker.errors

        with _calls():
            container = self.client.containers.get(name)
            try:
                raw = self.client.api.stats(container.id, stream=False, one_shot=True)
            except docker.errors.InvalidVersion:  # an older engine: the sample waits for its pre-sample
                raw = self.client.api.stats(container.id, stream=False)
        return stats_of(str(container.name), raw, container.attrs.get("HostConfig") or {})

    def published_ports(self) -> list[tuple[str, str, str, int]]:
        with _calls():
            return docker_host.published_ports(self.client)

    def try_bind(self, image: str, address: str, port: int, name: str,
                 labels: Mapping[str, str] | None = None) -> str | None:
        with _calls():
            return docker_host.try_bind(self.client, image, address, port, name, dict(labels or {}))

    def port_holder(self, address: str, port: int) -> str | None:
        """A process (not a container) listening on the port, when the engine runs on this machine."""
        from pipeline_steps.adapters import slots

        return slots.port_holder(address, port) if slots.is_local(self.host) else None

    # ---------------------------------------------------------------- files in a container

    def _archive(self, name: str, path: str) -> Any:
        """The engine's tar archive of `path` in the container, opened; None when there is no such path
        (NotFoundError when there is no such container)."""
        import io
        import tarfile

        try:
            with _calls():
                stream, _stat = self.client.api.get_archive(name, path)
                data = b"".join(stream)
        except NotFoundError:
            if self.container(name) is None:
                raise
            return None
        return tarfile.open(fileobj=io.BytesIO(data))

    def get_file(self, name: str, path: str) -> bytes | None:
        """The file's bytes (the engine's archive of it), None when the container has no such file."""
        tar = self._archive(name, path)
        if tar is None:
            return None
        with tar:
            members = tar.getmembers()
            member = tar.extractfile(members[0]) if members and members[0].isfile() else None
            if member is None:
                raise EngineError(f"{path} in container {name} is not a regular file")
            return bytes(member.read())

    def list_dir(self, name: str, path: str) -> list[str] | None:
        """The names directly in directory `path` (from the engine's archive of it), sorted; None when
        the container has no such directory."""
        tar = self._archive(name, path.rstrip("/") or "/")
        if tar is None:
            return None
        with tar:
            members = tar.getmembers()
        if not members or not members[0].isdir():
            return None
        top = members[0].name.rstrip("/")
        return sorted({m.name[len(top) + 1:].split("/")[0] for m in members[1:]
                       if m.name.startswith(top + "/")} - {""})

    def put_file(self, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write `path` (root-owned, `mode`) into its existing directory with one archive upload."""
        import io
        import posixpath
        import tarfile
        import time

        directory, base = posixpath.split(path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(base)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with _calls():
            if not self.client.api.put_archive(name, directory or "/", buf.getvalue()):
                raise EngineError(f"the engine refused to write {path} in container {name}")

    def read_file(self, name: str, path: str, offset: int = 0) -> FileRead | None:
        """`stat` then `tail -c +offset+1` by exec: the file's identity and size, and its bytes from
        `offset` (empty when offset is at or past the end). None when there is no such file."""
        from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_fixed

        def run(argv: list[str]) -> tuple[int, bytes, bytes]:
            return self._run(container_id, name, argv, demux=True)

        def last(state: RetryCallState) -> tuple[int, bytes, bytes]:
            assert state.outcome is not None
            return state.outcome.result()

        def retrying(lost: Callable[[tuple[int, bytes, bytes]], bool]) -> Retrying:
            return Retrying(stop=stop_after_attempt(3), wait=wait_fixed(0.05), retry=retry_if_result(lost),
                            retry_error_callback=last)

        # the output of a quick exec is now and then lost by the engine under load: ask again (3 tries)
        with _calls():
            container_id = self.client.containers.get(name).id
            code, out, err = retrying(lambda done: done[0] == 0 and len(done[1].split()) != 2)(
                run, ["stat", "-L", "-c", "%d:%i %s", path])
        if code != 0:
            said = (err or out).decode(errors="replace").strip()
            if "No such file" in said or "can't stat" in said:
                return None
            raise EngineError(f"stat {path} in container {name} failed ({code}): {said[:300]}")
        try:
            ident, size_text = out.decode().split()
            size = int(size_text)
        except ValueError:
            raise EngineError(f"stat {path} in container {name} said {out[:100]!r}") from None
        if offset >= size:
            return FileRead(ident, size, b"")
        # the file only grows between the two calls (a rotation renames or truncates it): fewer bytes than
        # stat counted is a lost output, asked again; after 3 tries what came is kept (the reader goes on
        # from offset + what it got, so a rotation's short read loses nothing either)
        with _calls():
            code, out, err = retrying(lambda done: done[0] == 0 and len(done[1]) < size - offset)(
                run, ["tail", "-c", f"+{offset + 1}", path])
        if code != 0:
            said = err.decode(errors="replace").strip()
            if "No such file" in said or "can't open" in said:
                return None  # rotated away between the two calls: the next read sees the new file
            raise EngineError(f"tail {path} in container {name} failed ({code}): {said[:300]}")
        return FileRead(ident, size, out)

    # ---------------------------------------------------------------- named volumes (the deploy lock)

    def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """Create `name` with `labels`, or get the existing volume of that name unchanged."""
        with _calls():
            return _volume(self.client.api.create_volume(name=name, labels=dict(labels)))

    def volume(self, name: str) -> VolumeInfo | None:
        try:
            with _calls():
                return _volume(self.client.api.inspect_volume(name))
        except NotFoundError:
            return None

    def volumes(self, labels: Mapping[str, str]) -> list[VolumeInfo]:
        wanted = [f"{k}={v}" for k, v in labels.items()]
        with _calls():
            found = self.client.api.volumes(filters={"label": wanted} if wanted else None) or {}
        return [_volume(v) for v in found.get("Volumes") or []]

    def remove_volume(self, name: str) -> None:
        try:
            with _calls():
                self.client.api.remove_volume(name, force=True)
        except NotFoundError:
            pass


def _volume(data: Mapping[str, Any]) -> VolumeInfo:
    return VolumeInfo(name=str(data.get("Name") or ""), labels=dict(data.get("Labels") or {}),
                      created=str(data.get("CreatedAt") or ""))


def stats_of(name: str, raw: Mapping[str, Any], host_config: Mapping[str, Any]) -> ContainerStats:
    """A ContainerStats from the engine's stats document and the container's HostConfig."""
    import time

    from pipeline_steps.timestamps import parse_log_timestamp

    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    quota, period = int(host_config.get("CpuQuota") or 0), int(host_config.get("CpuPeriod") or 0)
    limit = int(host_config.get("NanoCpus") or 0) / 1e9 or (quota / period if quota > 0 and period > 0
                                                              else 1.0)
    usage = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
    percent = None
    system, pre_system = int(cpu.get("system_cpu_usage") or 0), int(pre.get("system_cpu_usage") or 0)
    if pre_system and system > pre_system:
        online = int(cpu.get("online_cpus") or 0) or len((cpu.get("cpu_usage") or {}).get("percpu_usage")
                                                         or ()) or 1
        delta = usage - int((pre.get("cpu_usage") or {}).get("total_usage") or 0)
        percent = round(100.0 * delta / (system - pre_system) * online / limit, 2)
    memory = raw.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = int(detail.get("inactive_file", detail.get("total_inactive_file", 0)) or 0)
    stamp = parse_log_timestamp(str(raw.get("read") or ""))
    return ContainerStats(container=name, read_at=stamp / 1e9 if stamp else time.time(), cpu_usage=usage,
                          cpu_limit=limit, memory_usage=max(0, int(memory.get("usage") or 0) - cache),
                          memory_limit=int(host_config.get("Memory") or 0) or None, cpu_percent=percent)
