"""nginx in a container for the bed, since nothing can be pulled.

`ensure_nginx_image(client)` docker-imports `pipeline-steps/nginx:bed` once: the host's Debian
/usr/sbin/nginx with every shared library `ldd` lists, mime.types, passwd/group and nginx's
directories. `start_nginx_container(client, servers, upstreams)` runs it with host networking (so nginx
reaches slots on the run's loopback address and listens there only), the ps-owned include's directory
bind-mounted at /etc/nginx/ps, and its error log on stderr (the container's logs) or, with
`log_on_host=True`, in a bind-mounted host directory.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.images import _busybox, import_once
from testbed.nginx import PROXY_DEFAULTS
from testbed.ports import address, free_port, unique, wait_port

NGINX_IMAGE = "pipeline-steps/nginx:bed2"  # bed2: with busybox's file tools
NGINX_BINARY = "/usr/sbin/nginx"
CONTAINER_DIR = "/etc/nginx/ps"  # where the container sees the include's host directory
CONTAINER_LOGS = "/var/log/nginx/ps"  # where the container sees the log directory (log_on_host)
FILE_TOOLS = ("mv", "rm", "mkdir", "ls", "test", "stat", "tail", "cat", "sh")
DIRS = ("bin", "etc", "etc/nginx", "usr", "usr/sbin", "usr/share", "usr/share/nginx", "var", "var/log",
        "var/log/nginx", "var/lib", "var/lib/nginx", "var/cache", "run", "tmp", "proc", "sys", "dev")


def shared_libraries(binary: str = NGINX_BINARY) -> list[str]:
    """Absolute paths of the libraries and the dynamic loader `ldd binary` lists."""
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return parse_ldd(listing)


def parse_ldd(listing: str) -> list[str]:
    """Paths in `ldd` output: `libz.so.1 => /lib/.../libz.so.1 (0x...)` and `/lib64/ld-linux... (0x...)`."""
    found: list[str] = []
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words:
            after = words[words.index("=>") + 1:]
            path = after[0] if after else ""
        else:
            path = words[0] if words else ""
        if path.startswith("/") and path not in found:
            found.append(path)
    return found


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, source: str, name: str, added: set[str]) -> None:
    """The content of `source` (symlinks followed) at `name`, with its parent directories."""
    parts = Path(name).parts[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent not in added:
            _add_dir(tar, parent)
            added.add(parent)
    real = Path(source).resolve()
    info = tar.gettarinfo(str(real), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    with open(real, "rb") as fh:
        tar.addfile(info, fh)


def nginx_rootfs_tar(binary: str = NGINX_BINARY) -> bytes:
    """A root file system holding the host's nginx and what it needs to run, as a tar."""
    if not Path(binary).is_file():
        raise RuntimeError(f"{binary} is missing (apt-get install nginx)")
    buf = io.BytesIO()
    added: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in DIRS:
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
            added.add(d)
        _add_file(tar, binary, "usr/sbin/nginx", added)
        _add_file(tar, str(_busybox()), "bin/busybox", added)
        for tool in FILE_TOOLS:
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for lib in shared_libraries(binary):
            _add_file(tar, lib, lib.lstrip("/"), added)
        if Path("/etc/nginx/mime.types").is_file():
            _add_file(tar, "/etc/nginx/mime.types", "etc/nginx/mime.types", added)
        _add_text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/false\n"
                  "www-data:x:33:33:www-data:/var/www:/bin/false\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        _add_text(tar, "etc/group", "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n")
        _add_text(tar, "etc/nginx/nginx.conf", "worker_processes 1;\nerror_log stderr notice;\n"
                  "events { worker_connections 64; }\nhttp { access_log off; }\n")
    return buf.getvalue()


def ensure_nginx_image(client: Any, name: str = NGINX_IMAGE) -> str:
    """`docker import` the nginx root file system once; return the image name."""
    return import_once(client, name, nginx_rootfs_tar,
                       changes=["ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                'CMD ["nginx", "-g", "daemon off;"]'])


@dataclass
class NginxContainer:
    """A running nginx container: the host directory holding the include ps owns, and its front port."""

    container: Any
    name: str
    dir: Path  # host side of CONTAINER_DIR: nginx.conf and the include
    include: Path  # host path of the include ps owns (router.include)
    conf: str  # the main conf as the container sees it (router.nginx.conf)
    port: int
    logs: Path | None = None  # host side of CONTAINER_LOGS when the error log is a file

    @property
    def url(self) -> str:
        return f"http://{address()}:{self.port}"

    @property
    def error_log(self) -> Path | None:
        return self.logs / "error.log" if self.logs else None

    def router(self) -> dict[str, Any]:
        """The `router` section of a ps.yaml for this nginx."""
        nginx: dict[str, Any] = {"conf": self.conf}
        if self.error_log:
            nginx["error_log"] = str(self.error_log)
        return {"include": str(self.include), "container": self.name, "url": self.url, "nginx": nginx}

    def log_text(self) -> str:
        return bytes(self.container.logs(stdout=True, stderr=True)).decode(errors="replace")

    def stop(self) -> None:
        """Remove the container and the host directories."""
        try:
            self.container.remove(force=True)
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.logs:
            shutil.rmtree(self.logs, ignore_errors=True)


def start_nginx_container(client: Any, servers: str, upstreams: str = "", *, port: int | None = None,
                          log_on_host: bool = False, name: str | None = None) -> NginxContainer:
    """Run nginx in a container with one worker; `servers` is the server block text ({port} for the
    front port, {proxy_defaults} for the bed's proxy settings), `upstreams` the include's first text."""
    image = ensure_nginx_image(client)
    work = Path(tempfile.mkdtemp(prefix="ps-bed-nginxc-"))
    logs = Path(tempfile.mkdtemp(prefix="ps-bed-nginxc-logs-")) if log_on_host else None
    port = port or free_port()
    include = work / "ps-upstreams.conf"
    include.write_text(upstreams)
    error_log = f"{CONTAINER_LOGS}/error.log" if logs else "stderr"
    (work / "nginx.conf").write_text(
        "worker_processes 1;\n"
        f"error_log {error_log} notice;\n"
        "pid /run/nginx.pid;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    include {CONTAINER_DIR}/{include.name};\n"
        + servers.replace("{port}", str(port)).replace("{address}", address())
        .replace("{proxy_defaults}", PROXY_DEFAULTS)
        + "\n}\n")
    volumes = {str(work): {"bind": CONTAINER_DIR, "mode": "ro"}}
    if logs:
        volumes[str(logs)] = {"bind": CONTAINER_LOGS, "mode": "rw"}
    conf = f"{CONTAINER_DIR}/nginx.conf"
    name = name or unique("pst-nginx-")
    try:
        container = client.containers.run(
            image, ["nginx", "-c", conf, "-g", "daemon off;"], detach=True, name=name,
            network_mode="host", volumes=volumes, labels={"pipeline-steps.test": "1"})
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        if logs:
            shutil.rmtree(logs, ignore_errors=True)
        raise
    bed = NginxContainer(container=container, name=name, dir=work, include=include, conf=conf, port=port,
                         logs=logs)
    if not wait_port(port, timeout=15):
        text = bed.log_text()
        bed.stop()
        raise RuntimeError(f"nginx container did not listen on {address()}:{port}: {text.strip()[-500:]}")
    return bed


# ---------------------------------------------------------------- nginx whose include is in a named volume


@dataclass
class VolumeNginx:
    """nginx in a container of any engine whose include directory is a NAMED VOLUME of that engine:
    nothing on this machine's file system reaches it, only the engine (archive, exec)."""

    client: Any  # a docker client of the engine that runs it
    container: Any
    name: str
    volume: str
    port: int
    docker: str  # the engine's endpoint (a ps.yaml hosts[].docker)
    include: str = f"{CONTAINER_DIR}/ps-upstreams.conf"  # as the container sees it (router.include)
    conf: str = f"{CONTAINER_DIR}/nginx.conf"

    @property
    def url(self) -> str:
        return f"http://{address()}:{self.port}"

    def router(self, name: str, host: str) -> dict[str, Any]:
        """The `routers:` entry for this nginx on ps.yaml host `host`."""
        return {"name": name, "host": host, "container": self.name, "include": self.include,
                "url": self.url, "nginx": {"conf": self.conf}}

    def read(self, path: str | None = None) -> str | None:
        """A file of the volume (the include by default) through the engine; None when missing."""
        import docker.errors

        try:
            stream, _ = self.client.api.get_archive(self.name, path or self.include)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return member.read().decode() if member else None

    def write(self, text: str, path: str | None = None) -> None:
        """Put a file into the volume behind ps's back (a hand edit on that server)."""
        target = path or self.include
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            _add_text(tar, target.rsplit("/", 1)[1], text)
        self.client.api.put_archive(self.name, target.rsplit("/", 1)[0], buf.getvalue())

    def nginx_t(self) -> tuple[int, str]:
        """`nginx -t` of the live config in the container: (exit code, what nginx said)."""
        code, out = self.container.exec_run(["nginx", "-c", self.conf, "-t", "-q"])
        return int(code), bytes(out or b"").decode(errors="replace")

    def log_text(self) -> str:
        return bytes(self.container.logs(stdout=True, stderr=True)).decode(errors="replace")

    def stop(self) -> None:
        """Remove the container and its volume."""
        for remove in (lambda: self.container.remove(force=True),
                       lambda: self.client.volumes.get(self.volume).remove(force=True)):
            try:
                remove()
            except Exception:
                pass


def start_volume_nginx(client: Any, docker: str, servers: str, upstreams: str = "", *,
                       port: int | None = None, name: str | None = None) -> VolumeNginx:
    """Run nginx (host networking, one worker) on the engine of `client` with CONTAINER_DIR a new named
    volume holding nginx.conf and the include's first text (put in through the engine before the start).
    `servers` as for start_nginx_container; `docker` is that engine's endpoint for ps.yaml."""
    image = ensure_nginx_image(client)
    port = port or free_port()
    name = name or unique("pst-vnginx-")
    volume = f"{name}-ps"
    client.volumes.create(volume, labels={"pipeline-steps.test": "1"})
    conf = ("worker_processes 1;\nerror_log stderr notice;\npid /run/nginx.pid;\n"
            "events { worker_connections 1024; }\nhttp {\n    access_log off;\n"
            f"    include {CONTAINER_DIR}/ps-upstreams.conf;\n"
            + servers.replace("{port}", str(port)).replace("{address}", address())
            .replace("{proxy_defaults}", PROXY_DEFAULTS) + "\n}\n")
    bed: VolumeNginx | None = None
    try:
        container = client.containers.create(
            image, ["nginx", "-c", f"{CONTAINER_DIR}/nginx.conf", "-g", "daemon off;"], name=name,
            network_mode="host", volumes={volume: {"bind": CONTAINER_DIR, "mode": "rw"}},
            labels={"pipeline-steps.test": "1"})
        bed = VolumeNginx(client=client, container=container, name=name, volume=volume, port=port,
                          docker=docker)
        bed.write(conf, f"{CONTAINER_DIR}/nginx.conf")
        bed.write(upstreams)
        container.start()
    except Exception:
        if bed is not None:
            bed.stop()
        else:
            client.volumes.get(volume).remove(force=True)
        raise
    if not wait_port(port, timeout=15):
        text = bed.log_text()
        bed.stop()
        raise RuntimeError(f"nginx container did not listen on {address()}:{port}: {text.strip()[-500:]}")
    return bed
