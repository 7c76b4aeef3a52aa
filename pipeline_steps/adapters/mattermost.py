"""Posting to a Mattermost incoming webhook, with retries for what can pass and surely did not post
(refused, unknown host, connect timeouts, 5xx) and none for what cannot (4xx) or may already have posted
(no answer within the read timeout, or the connection closed after the post was sent: a webhook post is not
idempotent, so sending it again could post twice).

The webhook URL is a secret: it is registered for masking, and no exception text (which would quote it)
is ever passed on; reasons are written here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pipeline_steps.adapters.interfaces import Delivery
from pipeline_steps.secrets import register_secret

__all__ = ["MAX_TEXT", "Delivery", "MattermostNotifier", "post", "register_webhook"]

MAX_TEXT = 16383  # Mattermost's limit for a post's message, in characters
CLOSED = "connection closed without an answer"  # the post was sent: the far side may have made it


class MattermostNotifier:
    """The Notifier interface over Mattermost's incoming webhooks (see `post`)."""

    def send(self, url: str, payload: dict[str, Any], *, timeout: float = 5.0, attempts: int = 3,
             backoff: float = 0.5) -> Delivery:
        return post(url, payload, timeout=timeout, attempts=attempts, backoff=backoff)


class _Retryable(Exception):
    """A failure worth another try (connection error, connect timeout, 5xx)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def register_webhook(url: str) -> None:
    """Mask the webhook URL and its secret path in every later line of output."""
    register_secret(url)
    parts = urlsplit(url)
    secret_part = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(secret_part) > 1:
        register_secret(secret_part)
        register_secret(secret_part.rstrip("/").rsplit("/", 1)[-1])


def post(url: str, payload: dict[str, Any], *, timeout: float = 5.0, attempts: int = 3,
         backoff: float = 0.5, max_backoff: float = 5.0) -> Delivery:
    """POST the payload as JSON; success is HTTP 200 with body `ok`. Never raises for delivery failures."""
    import requests
    import tenacity

    register_webhook(url)
    count = 0
    session = requests.Session()
    session.trust_env = False

    def send() -> Delivery:
        nonlocal count
        count += 1
        try:
            response = session.post(url, json=payload, timeout=(timeout, timeout), allow_redirects=False,
                                    headers={"User-Agent": "pipeline-steps mattermost-notify"})
        except requests.exceptions.ConnectTimeout:
            raise _Retryable(f"no connection within {timeout:g}s") from None
        except requests.exceptions.Timeout:
            reason = f"no answer within {timeout:g}s; not sent again, as Mattermost may have made the post"
            return Delivery(False, None, count, reason)
        except requests.exceptions.ConnectionError as exc:
            reason = _connection_reason(exc)
            if reason == CLOSED:
                return Delivery(False, None, count, f"{reason}; not sent again, as Mattermost may have made "
                                "the post")
            raise _Retryable(reason) from None
        except requests.exceptions.RequestException as exc:
            return Delivery(False, None, count, f"request failed: {type(exc).__name__}")
        body = response.text[:200].strip()
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {_short(body)}", response.status_code)
        if response.status_code == 200 and body == "ok":
            return Delivery(True, 200, count, "delivered")
        return Delivery(False, response.status_code, count,
                        f"HTTP {response.status_code}: {_short(body) or 'empty body'} (want 200 'ok')")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Retryable),
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_exponential(multiplier=backoff, min=0, max=max_backoff),
        reraise=True,
    )
    try:
        return retrying(send)
    except _Retryable as exc:
        return Delivery(False, exc.status, count, f"{exc.reason} (after {count} attempts)")
    finally:
        session.close()


def _connection_reason(exc: BaseException) -> str:
    text = repr(exc)
    if "NameResolution" in text or "gaierror" in text:
        return "unknown host"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "RemoteDisconnected" in text or "ConnectionReset" in text or "Connection aborted" in text:
        return CLOSED
    if "SSL" in text:
        return "TLS error"
    return "connection failed"


def _short(body: str) -> str:
    return " ".join(body.split())[:120]
