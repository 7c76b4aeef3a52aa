"""Images the bed needs, made locally since nothing can be pulled: a busybox base and the sample app."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

BASE_IMAGE = "pipeline-steps/busybox:base"
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = REPO_ROOT / "examples" / "sample-app"


def _busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("busybox")
    if not found:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    return Path(found)


def base_rootfs_tar() -> bytes:
    """A root file system of busybox-static with every applet linked, as a tar."""
    busybox = _busybox()
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "app", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        files = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
                 "etc/group": "root:x:0:\nnogroup:x:65534:\n"}
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def once_lock(name: str) -> AbstractContextManager[None]:
    """A lock (fcntl, a file under the temp dir) for making image `name`: xdist workers and parallel
    runs that need the same image wait for the first to make it, then reuse it. Keyed by the name only
    (the SDK shows every unix socket as the same base_url): makers for two engines merely take turns."""
    from testbed.engine import file_lock

    key = hashlib.sha256(name.encode()).hexdigest()[:16]
    return file_lock(Path(tempfile.gettempdir()) / "ps-bed-locks" / f"{key}.lock")


def import_once(client: Any, name: str, make: Callable[[], bytes | Path],
                changes: Sequence[str] = ()) -> str:
    """`docker import` the root file system `make()` returns (tar bytes or a tar file) unless `name`
    is already there; return the image name. One maker at a time per engine and name (once_lock)."""
    import docker.errors

    def present() -> bool:
        try:
            client.images.get(name)
            return True
        except docker.errors.ImageNotFound:
            return False

    if present():
        return name
    with once_lock(name):
        if present():  # made by another process while this one waited
            return name
        return _import(client, name, make, changes)


def _import(client: Any, name: str, make: Callable[[], bytes | Path], changes: Sequence[str]) -> str:
    repo, _, tag = name.partition(":")
    tar = make()
    target = {"repository": repo, "tag": tag or "latest", "changes": list(changes)}
    if isinstance(tar, Path):
        client.api.import_image_from_file(str(tar), **target)
    else:
        client.api.import_image_from_data(tar, **target)
    client.images.get(name)
    return name


def ensure_base_image(client: Any, name: str = BASE_IMAGE) -> str:
    """`docker import` the busybox root file system once; return the image name."""
    return import_once(client, name, base_rootfs_tar)


def sample_app_env(**overrides: str) -> dict[str, str]:
    """Environment for the sample app; keys as in examples/sample-app/app.sh."""
    return {k: str(v) for k, v in overrides.items()}


def copy_sample_app(dest: Path) -> Path:
    """A copy of the sample app's build context (so a test may change it freely)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in SAMPLE_APP.iterdir():
        shutil.copy2(item, dest / item.name)
    os.chmod(dest / "app.sh", 0o755)
    os.chmod(dest / "handler.sh", 0o755)
    return dest


def build_variants(client: Any, base_image: str, repo: str, variants: dict[str, str],
                   new_dir: Callable[[], Path]) -> None:
    """The sample app built once per BUILD_ID as `<repo>:<BUILD_ID>`, each with its extra Dockerfile
    lines (e.g. "ENV FAIL_EVERY=20\n"); `new_dir()` gives an empty build directory."""
    for build_id, extra in variants.items():
        ctx = copy_sample_app(new_dir())
        with open(ctx / "Dockerfile", "a") as fh:
            fh.write("\n" + extra)
        client.images.build(path=str(ctx), tag=f"{repo}:{build_id}", rm=True,
                            buildargs={"BUILD_ID": build_id, "BASE_IMAGE": base_image})


def remove_images(client: Any, *, repo_prefix: str | None = None, label: str | None = None) -> list[str]:
    """Untag this run's images (tags starting with repo_prefix, or images carrying label): never by ID
    with force, which would also take the tags of another run whose identical build hit the same cache.
    An image goes once its last tag does; one still in use stays. Returns the tags removed.

    The raw image list, read once: the SDK's images.list() inspects every image afterwards and fails
    when a parallel run removes one in between."""
    import docker.errors

    rows = client.api.images(filters={"label": label}) if label else client.api.images()
    removed: list[str] = []
    for row in rows:
        tags = [t for t in row.get("RepoTags") or [] if t != "<none>:<none>"]
        chosen = [t for t in tags if repo_prefix is None or t.startswith(repo_prefix)]
        for tag in chosen:
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError:
                pass
        if label and not tags:
            try:
                client.images.remove(row["Id"])
            except docker.errors.APIError:
                pass
    return removed
