"""`ps push`: push the images `ps build` made, once; transient registry failures are retried.

Credentials come from REGISTRY_USER / REGISTRY_PASSWORD (or the Docker config) and reach the engine
as the SDK's auth_config, never argv, logs or --json. A tag whose manifest the registry already
serves with the local image's digest is not pushed again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pipeline_steps.adapters.registry import (
    Credentials,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryTransient,
    credentials,
    split_ref,
)
from pipeline_steps.command import load, pass_output, report, service_option
from pipeline_steps.config import Config, Service
from pipeline_steps.durations import DURATION, format_duration
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable, unreachable
from pipeline_steps.inputs import BUILD_ID, TAG
from pipeline_steps.output import Output
from pipeline_steps.steps.build import check_tag, resolve_identity

if TYPE_CHECKING:
    import docker

T = TypeVar("T")

_AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials", "denied",
               "401", "403")
_TRANSIENT_WORDS = ("connection refused", "connection reset", "timeout", "timed out", "eof",
                    "broken pipe", "no route to host", "unexpected http status: 5", " 500 ", " 502 ",
                    " 503 ", " 504 ", "internal server error", "bad gateway", "service unavailable",
                    "dial tcp")


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


def classify_push_error(message: str) -> type[RegistryError]:
    """Which kind of failure a push-stream error message describes."""
    text = f" {message.lower()} "
    if any(word in text for word in _AUTH_WORDS):
        return RegistryAuthError
    if any(word in text for word in _TRANSIENT_WORDS):
        return RegistryTransient
    return RegistryError


def _retrying(out: Output, what: str, attempts: int, backoff: float, fn: Callable[[], T]) -> T:
    """Run fn, retrying RegistryTransient with exponential backoff (tenacity)."""
    from tenacity import (
        RetryCallState,
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential,
    )

    def announce(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        out.say(f"{what}: {exc}; retrying in {format_duration(wait)} "
                f"(attempt {state.attempt_number + 1}/{attempts})")

    retrying = Retrying(stop=stop_after_attempt(attempts),
                        wait=wait_exponential(multiplier=backoff, min=backoff, max=max(backoff, 30.0)),
                        retry=retry_if_exception_type(RegistryTransient), reraise=True,
                        before_sleep=announce)
    return retrying(fn)


def _local_image(client: docker.DockerClient, ref: str) -> Any:
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise BadInput(f"image {ref} is not in the local engine: run ps build first "
                       "(with the same --build-id)") from None


def _repo_digests(image: Any, repo: str) -> set[str]:
    digests = set()
    for entry in image.attrs.get("RepoDigests") or []:
        name, _, digest = str(entry).partition("@")
        if name == repo and digest:
            digests.add(digest)
    return digests


def _push_once(client: docker.DockerClient, repo: str, tag: str, creds: Credentials | None,
               out: Output) -> str:
    """One push through the engine; the pushed manifest digest."""
    import docker.errors
    import requests

    digest: str | None = None
    last_status: dict[str, str] = {}
    try:
        stream = client.api.push(repo, tag=tag, stream=True, decode=True,
                                 auth_config=creds.auth_config() if creds else None)
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(detail.get("message") or chunk["error"]).strip()
                raise classify_push_error(message)(message)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status, layer = chunk.get("status"), chunk.get("id")
            if status and layer and last_status.get(layer) != status and status != "Pushing":
                last_status[layer] = status
                out.debug(f"  {layer}: {status}")
            elif status and not layer:
                out.debug(f"  {status}")
    except docker.errors.APIError as exc:
        message = str(exc.explanation or exc)
        raise classify_push_error(message)(message) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Unreachable(f"Docker engine went away while pushing {repo}:{tag}: {exc}") from None
    if not digest:
        raise RegistryError(f"push of {repo}:{tag} reported no digest")
    return digest


def push(config: Config, services: Sequence[Service], build_id: str, out: Output, *,
         extra_tags: Sequence[str] = (), attempts: int = 4, backoff: float = 2.0,
         timeout: float = 10.0) -> PushResult:
    """Push `<registry>/<app>/<service>:<build_id>` (and extra tags) of each service, once."""
    from pipeline_steps.adapters.docker_host import connect

    for tag in extra_tags:
        check_tag(tag, "--tag")
    plan = [(svc, config.image_repo(svc), tag) for svc in services for tag in (build_id, *extra_tags)]
    registry_host = split_ref(config.image_ref(services[0], build_id))[0] if services else config.registry
    if out.dry_run:
        for svc, repo, tag in plan:
            out.say(f"would push {repo}:{tag} ({svc.name}) to {registry_host}")
        return PushResult(build_id, registry_host, None,
                          [PushedImage(svc.name, f"{repo}:{tag}", None) for svc, repo, tag in plan],
                          dry_run=True)
    client = connect(config.hosts[0], timeout=30)
    client.api.timeout = 1800
    try:
        images: dict[str, Any] = {}
        for svc in services:  # extra tags name this build: tag its image with them first
            repo = config.image_repo(svc)
            image = _local_image(client, f"{repo}:{build_id}")
            for tag in (build_id, *extra_tags):
                if tag != build_id:
                    image.tag(repo, tag=tag)
                images[f"{repo}:{tag}"] = image
        creds = credentials(registry_host, docker_auths=getattr(client.api, "_auth_configs", None))
        registry = RegistryClient(registry_host, creds, timeout=timeout)
        result = PushResult(build_id, registry_host, creds.username if creds else None)
        for svc, repo, tag in plan:
            ref = f"{repo}:{tag}"
            name = split_ref(ref)[1]
            try:
                remote = _retrying(out, f"registry {registry_host}", attempts, backoff,
                                   partial(registry.manifest_digest, name, tag))
                if remote and remote in _repo_digests(images[ref], repo):
                    out.say(f"{svc.name}: {ref} already pushed ({remote})")
                    result.images.append(PushedImage(svc.name, ref, remote, already=True))
                    continue
                out.say(f"{svc.name}: pushing {ref}")
                digest = _retrying(out, f"push {ref}", attempts, backoff,
                                   partial(_push_once, client, repo, tag, creds, out))
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
        client.close()


@click.command("push")
@service_option
@click.option("--build-id", type=BUILD_ID, metavar="ID", help="Push this BUILD_ID (default: the commit's).")
@click.option("--tag", "tags", multiple=True, type=TAG, metavar="TAG",
              help="Also tag this build TAG and push it, e.g. latest (repeatable).")
@click.option("--attempts", type=click.IntRange(1, 20), default=4, show_default=True,
              help="Tries per registry call when it fails transiently.")
@click.option("--backoff", type=DURATION, default="2s", show_default=True,
              help="First wait between tries; doubles each time (at most 30s).")
@click.option("--timeout", type=DURATION, default="10s", show_default=True,
              help="Per request to the registry's API.")
@pass_output
def command(out: Output, service: str | None, build_id: str | None, tags: tuple[str, ...], attempts: int,
            backoff: float, timeout: float) -> None:
    """Push the built images to the registry (REGISTRY_USER / REGISTRY_PASSWORD or docker login)."""
    config = load(out)
    services = config.select(service)
    ident = resolve_identity(build_id)
    result = push(config, services, ident.build_id, out, extra_tags=tags, attempts=attempts,
                  backoff=backoff, timeout=timeout)
    report(out, "push", asdict(result))
