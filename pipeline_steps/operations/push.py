"""`ps push`: push the images `ps build` made, once; transient registry failures are retried.

Credentials come from REGISTRY_USER / REGISTRY_PASSWORD (or the Docker config) and reach the engine
as the SDK's auth_config, never argv, logs or --json. A tag whose manifest the registry already
serves with the local image's digest is not pushed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline_steps.adapters.interfaces import DockerHost, ImageInfo
from pipeline_steps.adapters.registry import (
    RegistryAuthError,
    RegistryError,
    RegistryTransient,
    classify_push_error,
    credentials,
    split_ref,
)
from pipeline_steps.config import Config, Service
from pipeline_steps.errors import BadInput, CheckFailed, unreachable
from pipeline_steps.operations.build import check_tag
from pipeline_steps.progress import Progress

__all__ = ["classify_push_error", "push"]


@dataclass
class PushedImage:
    """One pushed (or already present) tag."""

    service: str
    image: str
    digest: str | None
    pushed: bool = False
    already: bool = False


@dataclass
class PushResult:
    build_id: str
    registry: str
    user: str | None
    images: list[PushedImage] = field(default_factory=list)
    dry_run: bool = False


def _local_image(engine: DockerHost, ref: str) -> ImageInfo:
    image = engine.image(ref)
    if image is None:
        raise BadInput(f"image {ref} is not in the local engine: run ps build first "
                       "(with the same --build-id)") from None
    return image


def _repo_digests(image: ImageInfo, repo: str) -> set[str]:
    digests = set()
    for entry in image.repo_digests:
        name, _, digest = str(entry).partition("@")
        if name == repo and digest:
            digests.add(digest)
    return digests


def push(config: Config, services: Sequence[Service], build_id: str, out: Progress, *,
         extra_tags: Sequence[str] = (), attempts: int = 4, backoff: float = 2.0,
         timeout: float = 10.0, dry_run: bool = False) -> PushResult:
    """Push `<registry>/<app>/<service>:<build_id>` (and extra tags) of each service, once.

    Progress lines (retries, -v detail) go to `out` (the CLI prints them)."""
    from pipeline_steps.adapters import factory
    from pipeline_steps.adapters.docker_host import open_host

    for tag in extra_tags:
        check_tag(tag, "--tag")
    plan = [(svc, config.image_repo(svc), tag) for svc in services for tag in (build_id, *extra_tags)]
    registry_host = split_ref(config.image_ref(services[0], build_id))[0] if services else config.registry
    if dry_run:
        for svc, repo, tag in plan:
            out.say(f"would push {repo}:{tag} ({svc.name}) to {registry_host}")
        return PushResult(build_id, registry_host, None,
                          [PushedImage(svc.name, f"{repo}:{tag}", None) for svc, repo, tag in plan],
                          dry_run=True)
    engine = open_host(config.hosts[0], timeout=30)
    engine.set_timeout(1800)
    try:
        images: dict[str, ImageInfo] = {}
        for svc in services:  # extra tags name this build: tag its image with them first
            repo = config.image_repo(svc)
            image = _local_image(engine, f"{repo}:{build_id}")
            for tag in (build_id, *extra_tags):
                if tag != build_id:
                    engine.tag(image.id, repo, tag)
                images[f"{repo}:{tag}"] = image
        creds = credentials(registry_host, docker_auths=engine.auth_configs())
        registry = factory.get().registry(registry_host, creds, timeout=timeout, attempts=attempts,
                                          backoff=backoff, on_retry=out.say)
        result = PushResult(build_id, registry_host, creds.username if creds else None)
        for svc, repo, tag in plan:
            ref = f"{repo}:{tag}"
            name = split_ref(ref)[1]
            try:
                remote = registry.digest(name, tag)
                if remote and remote in _repo_digests(images[ref], repo):
                    out.say(f"{svc.name}: {ref} already pushed ({remote})")
                    result.images.append(PushedImage(svc.name, ref, remote, already=True))
                    continue
                out.say(f"{svc.name}: pushing {ref}")
                digest = registry.push(engine, repo, tag, debug=out.debug)
            except RegistryAuthError as exc:
                raise CheckFailed(str(exc), result={"image": ref, "registry": registry_host}) from None
            except RegistryTransient as exc:
                raise unreachable(f"registry {registry_host}", str(exc), context=f"after {attempts} attempts",
                                  result={"image": ref, "registry": registry_host}) from None
            except RegistryError as exc:
                raise CheckFailed(f"push of {ref} failed: {exc}",
                                  result={"image": ref, "registry": registry_host}) from None
            out.say(f"{svc.name}: pushed {ref} {digest}")
            result.images.append(PushedImage(svc.name, ref, digest, pushed=True))
        return result
    finally:
        engine.close()
