"""Secret values are registered once and masked in every line `ps` prints."""

from __future__ import annotations

import json
from typing import Any

MASK = "****"
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask `value` in all later output (short values are ignored to avoid masking noise)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def mask(text: str) -> str:
    """Replace every registered secret in `text`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_obj(obj: Any) -> Any:
    """Mask secrets inside a JSON-able structure."""
    return json.loads(mask(json.dumps(obj, default=str)))


def mask_url(url: str) -> str:
    """Show a webhook-style URL without its secret part: scheme and host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return MASK
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASK}"
