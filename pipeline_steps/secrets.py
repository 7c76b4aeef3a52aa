"""Secret values are registered once and masked in every line `ps` prints."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

MASK = "****"
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask `value` in all later output (short values are ignored to avoid masking noise).

    Also the forms it takes inside a JSON string, a Python repr (tracebacks) and a URL."""
    if not value or len(value) < 4:
        return
    from urllib.parse import quote

    _SECRETS.add(value)
    for form in (json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, safe="")):
        if len(form) >= 4:
            _SECRETS.add(form)


# The one place that says which names hold secrets.
# ps.yaml env entries (services.<s>.env): a secret hint anywhere in the name (DB_PASSWORD, API_KEY_2).
SECRET_HINT = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
# Pipeline environment variables (many unrelated ones, PATH, KEYBOARD_LAYOUT...): by the end of their name
# (GITLAB_TOKEN, REGISTRY_PASSWORD, MATTERMOST_WEBHOOK_URL, CI_JOB_TOKEN, ...).
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY|WEBHOOK_URL)$")
# Query parameters of a URL whose value is a secret (?private_token=..., ?key=..., ?sig=...).
SECRET_QUERY = re.compile(r"token|key|secret|pass|auth|sig|credential", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a ps.yaml env entry of this name holds a secret (its value is masked everywhere)."""
    return bool(SECRET_HINT.search(name))


def is_secret_env_name(name: str) -> bool:
    """Whether a pipeline environment variable of this name holds a secret."""
    return bool(SECRET_NAME.search(name.upper()))


def register_url_secrets(url: str) -> None:
    """Register the secret parts of a URL: the userinfo's password (and the whole userinfo), and the
    values of token-like query parameters, as written and percent-decoded."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    if "://" not in url:
        return
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:  # user:password@
            for value in (password, unquote(password), userinfo):
                register_secret(value)
        elif parts.scheme in ("http", "https") and len(user) >= 16:  # https://<token>@host
            register_secret(user)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if SECRET_QUERY.search(name):
            register_secret(value)
    for raw in parts.query.split("&"):
        name, _, value = raw.partition("=")
        if SECRET_QUERY.search(name):
            register_secret(value)


def register_environment(env: Mapping[str, str]) -> None:
    """Register the secrets the environment holds: values of secret-named variables (with the hook key
    of a webhook URL) and the secret parts of every URL-valued variable (GITLAB_URL with a token...)."""
    for name, value in env.items():
        if not value:
            continue
        if is_secret_env_name(name):
            register_secret(value)
            hook_key = value.rstrip("/").rsplit("/", 1)[-1]
            if name.upper().endswith("WEBHOOK_URL") and "://" in value and len(hook_key) >= 8:
                register_secret(hook_key)
        if "://" in value:
            register_url_secrets(value)


def mask(text: str) -> str:
    """Replace every registered secret in `text`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_obj(obj: Any) -> Any:
    """Mask secrets inside a JSON-able structure (every string, keys included)."""
    plain = json.loads(json.dumps(obj, default=str))

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return mask(value)
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {mask(key): walk(item) for key, item in value.items()}
        return value

    return walk(plain)


def mask_url(url: str) -> str:
    """Show a webhook-style URL without its secret part: scheme and host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return MASK
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASK}"
