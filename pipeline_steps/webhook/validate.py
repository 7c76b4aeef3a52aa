"""What a webhook request says and whether it is acceptable: token, ids, JSON shape, the push it carries.

Pure functions, no I/O: the receiver (server.py) calls them on every delivery, so they avoid repeated work
(the body is hashed once, the nesting walk is skipped when the body cannot nest that deep).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_steps.webhook.store import PushEvent

MAX_BODY = 1024 * 1024
MAX_DEPTH = 400
MAX_KEY = 128           # longer Idempotency-Keys / UUIDs are hashed (sha256), never cut
MIN_TOKEN_LENGTH = 16
ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class Classified(PushEvent):
    """A parsed delivery: what it is and, when we will not act on it, why."""

    ignored: str | None  # the reason, or None when this delivery starts the action


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the X-Gitlab-Token header with the configured secret."""
    return hmac.compare_digest((given or "").encode("utf-8"), expected.encode("utf-8"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header_id(value: str) -> str:
    """A header value as an id: itself when short and printable, else `sha256:<hex>` of it (never cut)."""
    if len(value) <= MAX_KEY and value.isprintable():
        return value
    return "sha256:" + _sha256(value.encode("utf-8", "surrogateescape"))


def _headers(headers: Mapping[str, str]) -> tuple[str, str]:
    lowered = {k.lower(): v for k, v in headers.items()}
    return (lowered.get("idempotency-key") or "").strip(), (lowered.get("x-gitlab-event-uuid") or "").strip()


def identify(idem: str, uuid: str, body: bytes) -> tuple[str, list[str]]:
    """(delivery key, every id the delivery is known by) from the stripped Idempotency-Key and
    X-Gitlab-Event-UUID header values (empty when absent) and the body, hashed once."""
    body_hash = _sha256(body)
    ids = [f"body:{body_hash}"]
    key = ""
    if idem:
        key = _header_id(idem)
        ids.append(f"idem:{key}")
    if uuid:
        uuid_id = _header_id(uuid)
        key = key or uuid_id
        ids.append(f"uuid:{uuid_id}")
    return key or f"sha256:{body_hash}", ids


def delivery_key(headers: Mapping[str, str], body: bytes) -> str:
    """Idempotency-Key, else X-Gitlab-Event-UUID, else a hash of the body (a replay is the same body)."""
    return identify(*_headers(headers), body)[0]


def delivery_ids(headers: Mapping[str, str], body: bytes) -> list[str]:
    """Every id a delivery is known by: a repeat matching any one of them is the same delivery."""
    return identify(*_headers(headers), body)[1]


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None


def classify(payload: Mapping[str, Any], branches: tuple[str, ...]) -> Classified:
    """Decide whether a GitLab payload starts the action: a push to one of `branches`, or a merge request
    merged into one of them (its merge commit is the commit to deploy)."""
    kind = str(payload.get("object_kind") or payload.get("event_name") or "unknown")
    raw_attrs = payload.get("object_attributes")
    attrs: dict[str, Any] = raw_attrs if isinstance(raw_attrs, dict) else {}
    ref = payload.get("ref") if isinstance(payload.get("ref"), str) else None
    sha = _text(payload.get("checkout_sha")) or _text(payload.get("after"))
    if kind == "merge_request" and attrs.get("action") == "merge":
        target = _text(attrs.get("target_branch"))
        ref = f"refs/heads/{target}" if target else None
        raw_last = attrs.get("last_commit")
        last: dict[str, Any] = raw_last if isinstance(raw_last, dict) else {}
        # merge commit; squash commit of a fast-forward squash; the head itself of a fast-forward merge
        sha = (_text(attrs.get("merge_commit_sha")) or _text(attrs.get("squash_commit_sha"))
               or _text(last.get("id")))
    branch = ref.removeprefix("refs/heads/") if ref and ref.startswith("refs/heads/") else None
    project_raw = payload.get("project")
    project = None
    if isinstance(project_raw, dict):
        project = str(project_raw.get("path_with_namespace") or project_raw.get("id") or "") or None
    if project is None and payload.get("project_id") is not None:
        project = str(payload.get("project_id"))
    user_raw = payload.get("user")
    user = payload.get("user_username") or payload.get("user_name") or (
        user_raw.get("username") if isinstance(user_raw, dict) else None)
    user = str(user) if user else None

    def result(reason: str | None) -> Classified:
        return Classified(kind, ref, branch, sha, project, user, reason)

    if kind == "merge_request":
        if attrs.get("action") != "merge":
            return result(f"event {kind!r} ({attrs.get('action') or 'no action'}) is not a push or a merge")
        if branch is None or branch not in branches:
            return result(f"merge into {branch!r} does not deploy (only {', '.join(branches)})")
        if not sha:
            return result("merge event without a merge commit")
        return result(None)
    if kind != "push":
        return result(f"event {kind!r} is not a push")
    if branch is None:
        return result(f"ref {ref!r} is not a branch")
    if branch not in branches:
        return result(f"branch {branch!r} does not deploy (only {', '.join(branches)})")
    if not sha or sha == ZERO_SHA:
        return result(f"branch {branch!r} was deleted")
    return result(None)


def commit_ids(info: Classified) -> tuple[list[str], list[str]]:
    """(ids recorded, ids looked up) that make a merge event and its merge commit's push one trigger."""
    if info.ignored or not info.branch or not info.sha:
        return [], []
    mine, other = ("merge", "push") if info.event == "merge_request" else ("push", "merge")
    return [f"{mine}:{info.branch}:{info.sha}"], [f"{other}:{info.branch}:{info.sha}"]


def nesting_within(value: Any, limit: int) -> bool:
    """Whether JSON arrays/objects nest at most `limit` deep (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children: Iterable[Any] = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def parse_body(body: bytes, max_depth: int) -> tuple[dict[str, Any] | None, str | None]:
    """(payload, None) or (None, the reason it is refused)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        return None, f"JSON nested deeper than {max_depth} levels"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "body is not JSON"
    if not isinstance(payload, dict):
        return None, "body is not a JSON object"
    # each level of nesting needs a `[` or `{` byte: with fewer of them in the body, no walk is needed
    if body.count(b"[") + body.count(b"{") > max_depth and not nesting_within(payload, max_depth):
        return None, f"JSON nested deeper than {max_depth} levels"
    return payload, None
