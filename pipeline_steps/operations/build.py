"""`ps build`: build service images tagged `<registry>/<app>/<service>:<BUILD_ID>` with OCI labels.

The build runs on the first configured host through its DockerHost's build stream; an
image that already carries the same tag and revision label is not rebuilt (unless --force).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_steps.config import Config, Service
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.progress import Progress

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import DockerHost, ImageInfo

LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_TITLE = "org.opencontainers.image.title"
LABEL_APP = "pipeline-steps.app"
LABEL_SERVICE = "pipeline-steps.service"

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILD_TIMEOUT = 3600  # seconds the engine may stay silent during one build
LOG_TAIL = 20


@dataclass(frozen=True)
class BuildIdentity:
    """What an image is built from: BUILD_ID (the tag), the full commit and where it came from."""

    build_id: str
    revision: str
    dirty: bool = False
    source_url: str | None = None


@dataclass
class ServiceImage:
    """One service's image after `ps build`."""

    service: str
    image: str
    image_id: str | None
    tags: list[str] = field(default_factory=list)
    built: bool = False
    skipped: bool = False
    reason: str = ""


@dataclass
class BuildResult:
    build_id: str
    revision: str
    images: list[ServiceImage]
    dotenv: str | None = None
    dry_run: bool = False


def check_tag(value: str, what: str) -> str:
    """A valid Docker tag, or BadInput."""
    if not _TAG.match(value):
        raise BadInput(f"{what} {value!r} is not a valid image tag (letters, digits, '_', '.', '-'; "
                       "at most 128)")
    return value


def resolve_identity(build_id: str | None = None, cwd: Path | None = None) -> BuildIdentity:
    """BUILD_ID and revision from --build-id and/or the CI context (Jenkins, GitLab, local git)."""
    from pipeline_steps.context import detect

    if build_id:
        check_tag(build_id, "--build-id")
        try:
            ctx = detect(cwd=cwd)
        except BadInput:
            return BuildIdentity(build_id=build_id, revision=build_id)
        return BuildIdentity(build_id=build_id, revision=ctx.sha, dirty=ctx.dirty, source_url=ctx.source_url)
    ctx = detect(cwd=cwd)
    return BuildIdentity(build_id=ctx.build_id, revision=ctx.sha, dirty=ctx.dirty, source_url=ctx.source_url)


def parse_build_args(items: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`K=V` pairs; a bare `K` takes its value from the environment (keeps secrets out of argv)."""
    env = os.environ if env is None else env
    args: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not _ARG_NAME.match(name):
            raise BadInput(f"--build-arg {item!r}: give NAME=VALUE (or NAME to take it from the environment)")
        if not eq:
            if name not in env:
                raise BadInput(f"--build-arg {name}: no value given and ${name} is not set")
            value = env[name]
        args[name] = value
    return args


def dotenv_name(service: str) -> str:
    """`IMAGE_<SERVICE>`: upper-cased, every non-alphanumeric character turned into `_`."""
    return "IMAGE_" + re.sub(r"[^A-Z0-9]", "_", service.upper())


def dotenv_text(build_id: str, images: Sequence[ServiceImage]) -> str:
    lines = [f"BUILD_ID={build_id}"] + [f"{dotenv_name(i.service)}={i.image}" for i in images]
    return "\n".join(lines) + "\n"


def oci_labels(config: Config, service: Service, ident: BuildIdentity) -> dict[str, str]:
    labels = {
        LABEL_REVISION: ident.revision,
        LABEL_VERSION: ident.build_id,
        LABEL_CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        LABEL_TITLE: f"{config.app}/{service.name}",
        LABEL_APP: config.app,
        LABEL_SERVICE: service.name,
    }
    if ident.source_url:
        labels[LABEL_SOURCE] = ident.source_url
    return labels


def _short(image_id: str) -> str:
    return image_id.rpartition(":")[2][:12]


def _tag_extra(engine: DockerHost, image: ImageInfo, repo: str, tags: Sequence[str]) -> list[str]:
    refs = []
    for tag in tags:
        engine.tag(image.id, repo, tag)
        refs.append(f"{repo}:{tag}")
    return refs


def _stream_build(engine: DockerHost, service: Service, ref: str, build_args: dict[str, str],
                  labels: dict[str, str], out: Progress) -> str:
    """Run one build, streaming its log; the image id, or CheckFailed naming the failing instruction."""
    from pipeline_steps.adapters.interfaces import EngineError, EngineGone

    tail: deque[str] = deque(maxlen=LOG_TAIL)
    last_step = ""
    error: str | None = None
    image_id: str | None = None
    try:
        for chunk in engine.build(path=service.context, dockerfile=service.dockerfile, tag=ref,
                                  buildargs=build_args, labels=labels):
            if "stream" in chunk:
                text = str(chunk["stream"])
                out.stream(text)
                for line in text.splitlines():
                    if line.strip():
                        tail.append(line)
                    if line.startswith("Step ") and " : " in line:
                        last_step = line.strip()
            elif "error" in chunk:
                detail = chunk.get("errorDetail") or {}
                error = str(detail.get("message") or chunk["error"]).strip()
                tail.append(error)
                out.stream(error + "\n")
            elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            elif "status" in chunk:
                out.stream(str(chunk["status"]) + "\n")
    except EngineGone as exc:
        raise Unreachable(f"Docker engine went away while building {service.name}: {exc}") from None
    except EngineError as exc:
        error = str(exc)
    if error is None and image_id is None:
        image = engine.image(ref)
        image_id = image.id if image is not None else None
    if error is not None or image_id is None:
        where = f" at {last_step}" if last_step else ""
        raise CheckFailed(f"build of service {service.name} failed{where}: {error or 'no image produced'}",
                          result={"service": service.name, "image": ref, "failed_step": last_step,
                                  "error": error, "log_tail": list(tail)})
    return image_id


def build(config: Config, services: Sequence[Service], ident: BuildIdentity, out: Progress, *,
          extra_tags: Sequence[str] = (), build_args: Mapping[str, str] | None = None,
          force: bool = False, dotenv_out: Path | None = None, dry_run: bool = False) -> BuildResult:
    """Build (or find already built) the images of `services`; dry-run only says what it would do.

    Progress lines and the build log go to `out` (the CLI prints them)."""
    from pipeline_steps.adapters.docker_host import open_host

    for tag in extra_tags:
        check_tag(tag, "--tag")
    args = {**(build_args or {}), "BUILD_ID": ident.build_id}
    for service in services:
        context = Path(service.context)
        if not context.is_dir():
            raise BadInput(f"services.{service.name}.context: directory not found: {context}")
        dockerfile = context / service.dockerfile
        if not dockerfile.is_file():
            raise BadInput(f"services.{service.name}.dockerfile: file not found: {dockerfile}")
    images: list[ServiceImage] = []
    if dry_run:
        shown = ", ".join(args)
        for service in services:
            ref = config.image_ref(service, ident.build_id)
            repo = config.image_repo(service)
            tags = [ref] + [f"{repo}:{t}" for t in extra_tags]
            out.say(f"would build {service.name} as {', '.join(tags)} from {service.context} "
                    f"({service.dockerfile}; build-args {shown})")
            images.append(ServiceImage(service.name, ref, None, tags, reason="dry run"))
        if dotenv_out is not None:
            out.say(f"would write {dotenv_out}")
        return BuildResult(ident.build_id, ident.revision, images, None, dry_run=True)

    host = config.hosts[0]
    engine = open_host(host, timeout=30)
    engine.set_timeout(BUILD_TIMEOUT)
    try:
        for service in services:
            ref = config.image_ref(service, ident.build_id)
            repo = config.image_repo(service)
            existing = engine.image(ref)
            same = existing is not None and (existing.labels or {}).get(LABEL_REVISION) == ident.revision
            if existing is not None and same and not force and not ident.dirty:
                tags = [ref, *_tag_extra(engine, existing, repo, extra_tags)]
                out.say(f"{service.name}: {ref} already built from {ident.revision[:12]} "
                        f"({_short(existing.id)}); not rebuilding (--force rebuilds)")
                images.append(ServiceImage(service.name, ref, existing.id, tags, skipped=True,
                                           reason="same tag and revision already present"))
                continue
            why = "--force" if same and force else "dirty work tree" if same else "new"
            out.say(f"{service.name}: building {ref} on {host.name} ({why})")
            image_id = _stream_build(engine, service, ref, args, oci_labels(config, service, ident), out)
            built = engine.image(image_id)
            if built is None:
                raise CheckFailed(f"build of service {service.name}: image {_short(image_id)} vanished "
                                  "right after the build")
            tags = [ref, *_tag_extra(engine, built, repo, extra_tags)]
            out.say(f"{service.name}: built {ref} ({_short(image_id)})")
            images.append(ServiceImage(service.name, ref, image_id, tags, built=True, reason=why))
    finally:
        engine.close()
    written = None
    if dotenv_out is not None:
        dotenv_out.write_text(dotenv_text(ident.build_id, images), encoding="utf-8")
        written = str(dotenv_out)
        out.say(f"wrote {dotenv_out}")
    return BuildResult(ident.build_id, ident.revision, images, written)
