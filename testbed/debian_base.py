"""A local Debian + Python base image (nothing can be pulled): debootstrap once, docker import, reuse.

`ensure_debian_python_image(client)` returns `pipeline-steps/debian-python:base`, making it only when the
engine does not have it yet. Needs the Debian package debootstrap and root; downloads from the Debian
mirror (env DEBIAN_MIRROR, default http://deb.debian.org/debian).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from testbed.images import import_once

DEBIAN_PYTHON_IMAGE = "pipeline-steps/debian-python:base"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _debootstrap() -> str:
    for candidate in (shutil.which("debootstrap"), "/usr/sbin/debootstrap"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys in the target while it works; never rmtree through a mount."""
    subprocess.run(["umount", "-R", str(root / "rootfs" / "proc")], capture_output=True, check=False)
    subprocess.run(["umount", "-R", str(root / "rootfs" / "sys")], capture_output=True, check=False)


def make_rootfs_tar(work: Path, mirror: str | None = None, suite: str = SUITE) -> Path:
    """debootstrap a minbase Debian with Python 3 into work/rootfs and tar it to work/rootfs.tar."""
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    rootfs = work / "rootfs"
    mirror = mirror or os.environ.get("DEBIAN_MIRROR") or "http://deb.debian.org/debian"
    done = subprocess.run(
        [_debootstrap(), "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(rootfs), mirror],
        capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace")[-1500:] if log.is_file() else done.stderr[-1500:]
        raise RuntimeError(f"debootstrap failed: {tail}")
    _unmount_below(work)
    # keep the image small: no apt lists or caches
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        target = rootfs / junk
        if target.is_dir():
            for item in target.iterdir():
                if item.is_file():
                    item.unlink()
    tar = work / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tar), "."], check=True,
                   capture_output=True, timeout=600)
    return tar


def ensure_debian_python_image(client: Any, name: str = DEBIAN_PYTHON_IMAGE) -> str:
    """The Debian + Python base image in `client`'s engine, made (slowly, once) when missing."""
    work = Path(tempfile.mkdtemp(prefix="ps-bed-debian-"))
    try:
        return import_once(client, name, lambda: make_rootfs_tar(work),
                           changes=['CMD ["/bin/bash"]', "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                    "/usr/bin:/sbin:/bin LANG=C.UTF-8"])
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


_CONTEXT_IGNORE = (".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   ".hypothesis", "*.egg-info", "build", "dist", ".demo", "results", "wheels", "*.sqlite3")


def prepare_build_context(dest: Path, repo: Path = REPO_ROOT, wheels: bool = True) -> Path:
    """A copy of the repo as the image's build context; with `wheels`, every wheel `pip install .` needs
    (built on the host with its pip and index settings) in dest/wheels, for `--build-arg WHEELS=wheels`."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(*_CONTEXT_IGNORE), symlinks=True)
    if wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", str(dest), "-w",
                               str(dest / "wheels")], capture_output=True, text=True, check=False,
                              timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel failed: {done.stderr[-2000:]}")
    return dest


def build_stage_tag(tag: str) -> str:
    """The tag build_ps_image gives the Dockerfile's build stage of image `tag`."""
    return f"{tag}-build"


def build_ps_image(client: Any, tag: str, base_image: str, context: Path, wheels: bool = True) -> str:
    """Build the repo's Dockerfile from `base_image`; returns the tag. Raises with the build log's tail."""
    import docker.errors

    buildargs = {"BASE_IMAGE": base_image, "WHEELS": "wheels" if wheels else ""}
    try:
        # the build stage under a tag of its own first (the full build reuses it from the cache), so
        # the caller removes exactly its own stage: pruning dangling stages would hit a parallel run's
        for target, name in (("build", build_stage_tag(tag)), (None, tag)):
            client.images.build(path=str(context), tag=name, buildargs=buildargs, rm=True, forcerm=True,
                                pull=False, **({"target": target} if target else {}))
    except docker.errors.BuildError as exc:
        tail = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
        raise RuntimeError(f"image build failed: {exc.msg}\n{tail[-3000:]}") from None
    return tag


if __name__ == "__main__":  # `python -m testbed.debian_base`: make the image ahead of the tests
    import docker

    print(ensure_debian_python_image(docker.from_env(timeout=600)))
