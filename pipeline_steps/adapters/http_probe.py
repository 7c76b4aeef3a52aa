"""One HTTP GET or TCP connect, turned into a plain answer: status, body (bounded), latency or a reason.

Every failure of the network or of the peer becomes a short reason string, never an exception.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline_steps.health import MAX_BODY

if TYPE_CHECKING:
    import requests

__all__ = ["MAX_BODY", "Answer", "http_get", "new_session", "tcp_connect"]

MAX_REDIRECTS = 10


@dataclass(frozen=True)
class Answer:
    """What one probe got: an HTTP status and body, or the reason there was none."""

    status: int | None
    body: bytes
    latency: float  # seconds from the request to the end of the body (or the failure)
    error: str | None = None  # set when there is no complete answer
    not_listening: bool = False  # refused, or closed before any answer: nothing serves the port yet
    timed_out: bool = False  # no answer at all (not even a status line) within the timeout


def new_session() -> requests.Session:
    """A session that ignores proxy variables (health checks go straight to the target)."""
    import requests

    session = requests.Session()
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    return session


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the errors it wraps (args, reason, cause, context), breadth first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        yield current
        wrapped = [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            wrapped.append(reason)
        for nested in (current.__cause__, current.__context__):
            if nested is not None:
                wrapped.append(nested)
        queue.extend(wrapped)


def _has(exc: BaseException, *names: str) -> bool:
    return any(type(e).__name__ in names for e in _chain(exc))


def _connection_reason(exc: BaseException, host: str) -> tuple[str, bool]:
    """(reason, not_listening) for an error raised before any answer arrived."""
    if _has(exc, "NameResolutionError", "gaierror", "LocationParseError"):
        return f"unknown host {host}", False
    if _has(exc, "ConnectionRefusedError"):
        return "connection refused", True
    if _has(exc, "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError"):
        return "connection closed without an answer", True
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"connection failed: {text[:160]}", False


def http_get(url: str, timeout: float, max_body: int = MAX_BODY,
             session: requests.Session | None = None) -> Answer:
    """GET `url`, reading at most `max_body` bytes; every failure is an Answer with `error` set."""
    import requests
    from urllib3.util import parse_url

    own = session is None
    sess = session or new_session()
    start = time.monotonic()
    deadline = start + timeout
    try:
        host = parse_url(url).host or url
    except Exception:
        host = url
    try:
        try:
            response = sess.get(url, timeout=(timeout, timeout), stream=True, allow_redirects=True,
                                headers={"User-Agent": "pipeline-steps health-gate",
                                         "Accept": "application/json, */*"})
        except requests.exceptions.SSLError as exc:
            return Answer(None, b"", time.monotonic() - start, f"TLS error: {_tls_text(exc)}")
        except requests.exceptions.TooManyRedirects:
            return Answer(None, b"", time.monotonic() - start,
                          f"redirect loop (more than {MAX_REDIRECTS} redirects)")
        except requests.exceptions.ConnectTimeout:
            return Answer(None, b"", time.monotonic() - start, f"connect timed out after {timeout:g}s",
                          timed_out=True)
        except requests.exceptions.ReadTimeout:
            return Answer(None, b"", time.monotonic() - start, f"no answer within {timeout:g}s",
                          timed_out=True)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            return Answer(None, b"", time.monotonic() - start, f"bad URL: {exc}")
        except requests.exceptions.RequestException as exc:
            reason, not_listening = _connection_reason(exc, host)
            return Answer(None, b"", time.monotonic() - start, reason, not_listening)
        with response:
            body = bytearray()
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    body.extend(chunk)
                    if len(body) > max_body:
                        return Answer(response.status_code, bytes(body[:max_body]), time.monotonic() - start,
                                      f"body larger than {_size(max_body)}")
                    if time.monotonic() > deadline:
                        return Answer(response.status_code, bytes(body), time.monotonic() - start,
                                      f"answer not complete within {timeout:g}s")
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if _has(exc, "ReadTimeoutError", "TimeoutError", "timeout"):
                    return Answer(response.status_code, bytes(body), time.monotonic() - start,
                                  f"body not complete within {timeout:g}s")
                return Answer(response.status_code, bytes(body), time.monotonic() - start,
                              "connection reset mid-body")
            except requests.exceptions.RequestException as exc:
                return Answer(response.status_code, bytes(body), time.monotonic() - start,
                              f"body read failed: {type(exc).__name__}")
            return Answer(response.status_code, bytes(body), time.monotonic() - start)
    finally:
        if own:
            sess.close()


def tcp_connect(host: str, port: int, timeout: float) -> Answer:
    """Open and close a TCP connection; status is None, error says why it failed."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Answer(None, b"", time.monotonic() - start)
    except ConnectionRefusedError:
        return Answer(None, b"", time.monotonic() - start, "connection refused", True)
    except socket.gaierror:
        return Answer(None, b"", time.monotonic() - start, f"unknown host {host}")
    except TimeoutError:
        return Answer(None, b"", time.monotonic() - start, f"connect timed out after {timeout:g}s",
                      timed_out=True)
    except OSError as exc:
        return Answer(None, b"", time.monotonic() - start, f"connect failed: {exc.strerror or exc}")


def _tls_text(exc: BaseException) -> str:
    for err in _chain(exc):
        if type(err).__name__ in ("SSLError", "SSLCertVerificationError") and err.args:
            last = err.args[-1] if isinstance(err.args[-1], str) else str(err)
            return str(last)[:160]
    return str(exc)[:160]


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n % (1 << 20) == 0 else f"{n} bytes"
