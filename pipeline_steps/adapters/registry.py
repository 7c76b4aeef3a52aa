"""A Docker registry's HTTP API (v2), just enough to ask which manifest a tag points at.

Pushing itself goes through the Docker engine (SDK); this adapter answers "is it already there?"
with `HEAD /v2/<name>/manifests/<tag>` using basic auth, or the bearer-token flow registries such as
GitLab's and Docker Hub's ask for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline_steps.secrets import register_secret

if TYPE_CHECKING:
    import requests

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
                docker_auths: Any = None) -> Credentials | None:
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


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.strip().partition("=")
        if eq:
            params[key.strip().lower()] = value.strip().strip('"')
    return scheme.lower(), params


class RegistryClient:
    """Talks to one registry over HTTP(S)."""

    def __init__(self, address: str, creds: Credentials | None, timeout: float = 10.0) -> None:
        self.address = address
        self.creds = creds
        self.timeout = timeout
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
