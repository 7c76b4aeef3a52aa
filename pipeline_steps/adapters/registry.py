"""A Docker registry (the Registry interface): which manifest a tag points at, and pushing a tag.

"Is it already there?" is asked over the registry's HTTP API (v2), `HEAD /v2/<name>/manifests/<tag>`
with basic auth or the bearer-token flow registries such as GitLab's and Docker Hub's ask for. Pushing
goes through a DockerHost (the engine's push stream). Both are retried (tenacity) on RegistryTransient.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline_steps.secrets import register_secret

if TYPE_CHECKING:
    import requests

    from pipeline_steps.adapters.interfaces import AuthResolver, DockerHost

T = TypeVar("T")

MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
))
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


class RegistryError(Exception):
    """A registry said no in a way retrying will not fix."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or wants some and none were given)."""


class RegistryTransient(RegistryError):
    """Connection refused or reset, timeout, or a 5xx: worth retrying."""


@dataclass(frozen=True)
class Credentials:
    """A registry user and password; the password is registered as a secret and never printed."""

    username: str
    password: str = field(repr=False)
    source: str = "environment"

    def auth_config(self) -> dict[str, str]:
        """The SDK's auth_config (sent to the engine in a header, never on a command line)."""
        return {"username": self.username, "password": self.password}


def split_ref(ref: str) -> tuple[str, str, str]:
    """`host:port/app/svc:tag` -> (`host:port`, `app/svc`, `tag`)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    host, _, path = name.partition("/")
    return host, path, tag


def credentials(registry: str, env: Mapping[str, str] | None = None,
                docker_auths: AuthResolver | None = None) -> Credentials | None:
    """REGISTRY_USER / REGISTRY_PASSWORD, else the Docker config's entry for `registry`, else None."""
    env = os.environ if env is None else env
    user, password = env.get("REGISTRY_USER"), env.get("REGISTRY_PASSWORD")
    if password:
        register_secret(password)
    if user and password:
        return Credentials(user, password, "environment")
    if docker_auths is None:
        return None
    try:
        entry = docker_auths.resolve_authconfig(registry) or {}
    except Exception:  # a broken credential helper must not hide the registry's own answer
        return None
    user = entry.get("username") or entry.get("Username")
    password = entry.get("password") or entry.get("Password")
    if user and password:
        register_secret(password)
        return Credentials(str(user), str(password), "docker config")
    return None


def env_auth(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """REGISTRY_USER / REGISTRY_PASSWORD as an engine auth_config (pulls, registry lookups), else None.

    The password is registered as a secret (never printed)."""
    creds = credentials("", env)
    return creds.auth_config() if creds else None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.strip().partition("=")
        if eq:
            params[key.strip().lower()] = value.strip().strip('"')
    return scheme.lower(), params


_AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials", "denied",
               "401", "403")
_TRANSIENT_WORDS = ("connection refused", "connection reset", "timeout", "timed out", "eof",
                    "broken pipe", "no route to host", "unexpected http status: 5", " 500 ", " 502 ",
                    " 503 ", " 504 ", "internal server error", "bad gateway", "service unavailable",
                    "dial tcp")


def classify_push_error(message: str) -> type[RegistryError]:
    """Which kind of failure a push-stream error message describes."""
    text = f" {message.lower()} "
    if any(word in text for word in _AUTH_WORDS):
        return RegistryAuthError
    if any(word in text for word in _TRANSIENT_WORDS):
        return RegistryTransient
    return RegistryError


def retrying(what: str, attempts: int, backoff: float, fn: Callable[[], T],
             on_retry: Callable[[str], None] | None = None) -> T:
    """Run fn, retrying RegistryTransient with exponential backoff (tenacity); on_retry gets one line."""
    from tenacity import (
        RetryCallState,
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential,
    )

    from pipeline_steps.durations import format_duration

    def announce(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if on_retry:
            on_retry(f"{what}: {exc}; retrying in {format_duration(wait)} "
                     f"(attempt {state.attempt_number + 1}/{attempts})")

    return Retrying(stop=stop_after_attempt(attempts),
                    wait=wait_exponential(multiplier=backoff, min=backoff, max=max(backoff, 30.0)),
                    retry=retry_if_exception_type(RegistryTransient), reraise=True,
                    before_sleep=announce)(fn)


def push_once(engine: DockerHost, repo: str, tag: str, creds: Credentials | None,
              debug: Callable[[str], None] | None = None) -> str:
    """One push through the engine; the pushed manifest digest (RegistryError kinds when refused)."""
    from pipeline_steps.adapters.interfaces import EngineError, EngineGone
    from pipeline_steps.errors import Unreachable

    digest: str | None = None
    last_status: dict[str, str] = {}
    try:
        for chunk in engine.push(repo, tag, creds.auth_config() if creds else None):
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
                if debug:
                    debug(f"  {layer}: {status}")
            elif status and not layer and debug:
                debug(f"  {status}")
    except EngineGone as exc:
        raise Unreachable(f"Docker engine went away while pushing {repo}:{tag}: {exc}") from None
    except EngineError as exc:
        raise classify_push_error(str(exc))(str(exc)) from None
    if not digest:
        raise RegistryError(f"push of {repo}:{tag} reported no digest")
    return digest


class RegistryClient:
    """Talks to one registry over HTTP(S); pushes through an engine. Transient failures are retried."""

    def __init__(self, address: str, creds: Credentials | None, timeout: float = 10.0, *,
                 attempts: int = 1, backoff: float = 2.0,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.creds = creds
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.on_retry = on_retry
        host = address.partition(":")[0]
        api_host = "registry-1.docker.io" if address in DOCKER_HUB else address
        secure = host not in ("localhost", "::1") and not host.startswith("127.")
        self.base = f"{'https' if secure else 'http'}://{api_host}"

    def _request(self, method: str, url: str, **kw: Any) -> requests.Response:
        import requests

        try:
            return requests.request(method, url, timeout=self.timeout, allow_redirects=True, **kw)
        except requests.Timeout:
            raise RegistryTransient(f"no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            text = str(exc).lower()
            reason = ("connection refused" if "refused" in text else
                      "connection reset" if "reset" in text or "aborted" in text else
                      "name not resolved" if "resolve" in text or "name or service" in text else
                      "connection failed")
            raise RegistryTransient(reason) from None
        except requests.RequestException as exc:
            raise RegistryError(_first_line(exc)) from None

    def _refused(self) -> RegistryAuthError:
        if self.creds is None:
            return RegistryAuthError(f"registry {self.address} wants credentials: set REGISTRY_USER and "
                                     "REGISTRY_PASSWORD, or docker login")
        return RegistryAuthError(f"registry {self.address} refused the credentials of user "
                                 f"{self.creds.username}")

    def _bearer(self, params: dict[str, str], name: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise self._refused()
        query = {"service": params.get("service", ""), "scope": params.get("scope") or
                 f"repository:{name}:pull"}
        auth = (self.creds.username, self.creds.password) if self.creds else None
        answer = self._request("GET", realm, params=query, auth=auth)
        if answer.status_code in (401, 403):
            raise self._refused()
        if answer.status_code >= 500:
            raise RegistryTransient(f"token service answered {answer.status_code}")
        try:
            body = answer.json()
        except ValueError:
            raise RegistryError(f"token service of {self.address} sent no JSON") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise self._refused()
        register_secret(str(token))
        return str(token)

    def manifest_digest(self, name: str, tag: str) -> str | None:
        """The digest the registry serves for `name:tag`, or None when it has no such tag."""
        url = f"{self.base}/v2/{name}/manifests/{tag}"
        headers = {"Accept": MANIFEST_TYPES}
        auth = (self.creds.username, self.creds.password) if self.creds else None
        answer = self._request("HEAD", url, headers=headers, auth=auth)
        if answer.status_code == 401:
            scheme, params = _challenge(answer.headers.get("WWW-Authenticate", ""))
            if scheme != "bearer":
                raise self._refused()
            token = self._bearer(params, name)
            answer = self._request("HEAD", url, headers={**headers, "Authorization": f"Bearer {token}"})
            if answer.status_code == 401:
                raise self._refused()
        if answer.status_code == 403:
            raise self._refused()
        if answer.status_code == 404:
            return None
        if answer.status_code >= 500:
            raise RegistryTransient(f"registry {self.address} answered {answer.status_code}")
        if answer.status_code != 200:
            raise RegistryError(f"registry {self.address} answered {answer.status_code} for {name}:{tag}")
        return answer.headers.get("Docker-Content-Digest")


    def digest(self, name: str, tag: str) -> str | None:
        """manifest_digest, retried on transient failures."""
        return retrying(f"registry {self.address}", self.attempts, self.backoff,
                        partial(self.manifest_digest, name, tag), self.on_retry)

    def exists(self, name: str, tag: str) -> bool:
        """True when the registry serves a manifest for `name:tag`."""
        return self.digest(name, tag) is not None

    def push(self, engine: DockerHost, repo: str, tag: str,
             debug: Callable[[str], None] | None = None) -> str:
        """Push `repo:tag` from the engine with this registry's credentials (retried); the digest."""
        return retrying(f"push {repo}:{tag}", self.attempts, self.backoff,
                        partial(push_once, engine, repo, tag, self.creds, debug), self.on_retry)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
