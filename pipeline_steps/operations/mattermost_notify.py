"""Mattermost notifications: tell the team what a deploy is doing, at a glance (`ps mattermost-notify`).

The webhook URL comes from the environment (MATTERMOST_WEBHOOK_URL, or notify.mattermost.webhook_env);
it is a secret and never printed. Chat never fails a deploy: a failed notification is a warning and exit 0,
unless --fail-on-error (then exit 1; no URL configured exits 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline_steps.adapters import mattermost
from pipeline_steps.config import DEFAULT_TIMEZONE, Config, MattermostNotify
from pipeline_steps.context import CIContext
from pipeline_steps.durations import format_duration
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.secrets import mask_url

STATUSES = ("started", "success", "failure", "rolled-back")
COLORS = {"started": "#1E88E5", "success": "#2E7D32", "failure": "#C62828", "rolled-back": "#F9A825"}
HEADLINES = {
    "started": (":rocket:", "deploy started"),
    "success": (":white_check_mark:", "deploy succeeded"),
    "failure": (":x:", "deploy FAILED"),
    "rolled-back": (":leftwards_arrow_with_hook:", "deploy rolled back"),
}
MAX_FIELD = 3000  # characters per free-text field (message, rollback info)
TRUNCATED = " …(truncated)"


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked when cut (never splits a code point)."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(TRUNCATED))
    return text[:keep].rstrip() + TRUNCATED[: limit - keep]


def traffic_split(deploy_type: str | None, weight: int | None) -> str | None:
    """`canary 40% / stable 60%` for a canary, `new 100% / old 0%` for other types."""
    if weight is None:
        return None
    rest = 100 - weight
    kind = (deploy_type or "").lower()
    if "canary" in kind:
        return f"canary {weight}% / stable {rest}%"
    if "blue" in kind or "green" in kind:
        return f"new color {weight}% / old color {rest}%"
    return f"new {weight}% / old {rest}%"


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


def build_payload(*, app: str, status: str, ctx: CIContext | None = None, deploy_type: str | None = None,
                  weight: int | None = None, message: str | None = None, rollback_info: str | None = None,
                  log_url: str | None = None, duration: float | None = None,
                  services: Sequence[str] | None = None, channel: str | None = None,
                  failed_at: str | None = None,
                  username: str | None = None, icon_url: str | None = None,
                  timezone: str = DEFAULT_TIMEZONE, now: datetime | None = None) -> dict[str, Any]:
    """The incoming-webhook payload (pure): headline text plus one attachment with the details."""
    from zoneinfo import ZoneInfo

    if status not in STATUSES:
        raise BadInput(f"unknown status {status!r} (use {', '.join(STATUSES)})")
    if weight is not None and not 0 <= weight <= 100:
        raise BadInput(f"weight {weight} is not a percentage from 0 to 100")
    zone = ZoneInfo(timezone)
    stamp = (now or datetime.now(zone)).astimezone(zone)
    when = stamp.strftime("%Y-%m-%d %H:%M:%S %Z")
    emoji, verb = HEADLINES[status]
    deploy_type = truncate(deploy_type, 100) if deploy_type else None
    kind = deploy_type or "deploy"
    build = ctx.build_id if ctx else "unknown"
    split = traffic_split(deploy_type, weight)
    svc_text = ", ".join(services) if services else "all services"
    headline = f"{emoji} **{app}** {deploy_type + ' ' if deploy_type else ''}{verb}: `{build}`"
    if ctx and ctx.branch:
        headline += f" on `{ctx.branch}`"
    failed_at = truncate(failed_at, 200) if failed_at and status in ("failure", "rolled-back") else None
    if failed_at:
        headline += f" (failed at {failed_at})"
    elif split:
        headline += f" ({split})"
    fallback = f"{app} {kind} {status}: {build}" + (f" (failed at {failed_at})" if failed_at
                                                    else f" ({split})" if split else "")

    fields: list[dict[str, Any]] = [
        {"title": "Deploy type", "value": kind, "short": True},
        {"title": "App / services", "value": f"{app}: {svc_text}", "short": True},
        {"title": "BUILD_ID", "value": _link(f"`{build}`", ctx.commit_url() if ctx else None), "short": True},
    ]
    if ctx and ctx.branch:
        fields.append({"title": "Branch", "value": ctx.branch, "short": True})
    if ctx and ctx.author:
        fields.append({"title": "Author", "value": ctx.author, "short": True})
    if failed_at:
        fields.append({"title": "Failed at", "value": failed_at, "short": True})
    elif split:
        fields.append({"title": "Traffic", "value": split, "short": True})
    if duration is not None:
        fields.append({"title": "Duration", "value": format_duration(duration), "short": True})
    links = []
    if ctx and ctx.pipeline_url:
        links.append(_link("pipeline", ctx.pipeline_url))
    if ctx and ctx.job_url and ctx.job_url != ctx.pipeline_url:
        links.append(_link("job", ctx.job_url))
    if links:
        fields.append({"title": "Links", "value": " · ".join(links), "short": True})
    if rollback_info or status in ("failure", "rolled-back"):
        fields.append({"title": "Rolled back", "short": False,
                       "value": truncate(rollback_info, MAX_FIELD) if rollback_info else "nothing reported"})
    if log_url or status == "failure":
        fields.append({"title": "Log", "value": _link("open the log", log_url) if log_url else "not given",
                       "short": False})
    if message:
        fields.append({"title": "Message", "value": truncate(message, MAX_FIELD), "short": False})

    title = f"{app} {build}"
    if ctx and ctx.title:
        title += f": {truncate(ctx.title, 200)}"
    attachment: dict[str, Any] = {
        "fallback": truncate(fallback, 500),
        "color": COLORS[status],
        "pretext": truncate(message, 500) if message and status in ("failure", "rolled-back") else "",
        "title": title,
        "fields": fields,
        "footer": f"pipeline-steps · {when}",
    }
    commit = ctx.commit_url() if ctx else None
    if commit:
        attachment["title_link"] = commit
    if not attachment["pretext"]:
        del attachment["pretext"]
    payload: dict[str, Any] = {
        "text": truncate(headline, mattermost.MAX_TEXT - 1),
        "attachments": [attachment],
        "props": {"pipeline_steps": {"app": app, "status": status, "build_id": build,
                                     "deploy_type": kind, "weight": weight, "at": stamp.isoformat()}},
    }
    if channel:
        payload["channel"] = channel
    if username:
        payload["username"] = username
    if icon_url:
        payload["icon_url"] = icon_url
    return payload


@dataclass(frozen=True)
class NotifyResult:
    """What happened to the notification."""

    delivered: bool
    status: str  # the deploy status notified
    webhook: str  # masked
    http_status: int | None = None
    attempts: int = 0
    reason: str = ""
    dry_run: bool = False
    payload: dict[str, Any] = field(default_factory=dict)


def notify(config: Config | None, ctx: CIContext | None, *, status: str, deploy_type: str | None = None,
           weight: int | None = None, message: str | None = None, rollback_info: str | None = None,
           log_url: str | None = None, duration: float | None = None, services: Sequence[str] | None = None,
           fail_on_error: bool = False, dry_run: bool = False, app: str | None = None,
           timeout: float | None = None, attempts: int = 3, backoff: float = 0.5,
           env: Mapping[str, str] | None = None, now: datetime | None = None,
           failed_at: str | None = None) -> NotifyResult:
    """Build and send the notification. Unless fail_on_error, never raises for delivery problems.

    Without log_url the log link is the CI job's (the context's job URL, else CI_JOB_URL / BUILD_URL).
    """
    settings = config.notify if config else MattermostNotify()
    environ = os.environ if env is None else env
    log_url = log_url or ci_log_url(ctx, environ)
    url = (environ.get(settings.webhook_env) or "").strip()
    if url:
        mattermost.register_webhook(url)
    payload = build_payload(
        app=app or (config.app if config else "app"), status=status, ctx=ctx, deploy_type=deploy_type,
        weight=weight, message=message, rollback_info=rollback_info, log_url=log_url, duration=duration,
        services=services, failed_at=failed_at, channel=settings.channel, username=settings.username,
        icon_url=settings.icon_url,
        timezone=config.timezone if config else DEFAULT_TIMEZONE, now=now)
    masked = mask_url(url) if url else "not set"
    if dry_run:
        return NotifyResult(False, status, masked, reason="dry run: nothing sent", dry_run=True,
                            payload=payload)
    if not url:
        reason = f"no webhook URL: set ${settings.webhook_env}"
        if fail_on_error:
            raise BadInput(reason, result={"delivered": False, "status": status, "webhook": masked})
        return NotifyResult(False, status, masked, reason=reason)
    if not url.startswith(("http://", "https://")):
        reason = f"${settings.webhook_env} is not an http(s) URL"
        if fail_on_error:
            raise BadInput(reason, result={"delivered": False, "status": status, "webhook": masked})
        return NotifyResult(False, status, masked, reason=reason)
    from pipeline_steps.adapters import factory

    delivery = factory.get().notifier().send(url, payload, timeout=timeout or settings.timeout,
                                             attempts=attempts, backoff=backoff)
    result = NotifyResult(delivery.delivered, status, masked, delivery.status, delivery.attempts,
                          delivery.reason)
    if not delivery.delivered and fail_on_error:
        raise CheckFailed(f"notification not delivered to {masked}: {delivery.reason}",
                          result=asdict(result))
    return result


def ci_log_url(ctx: CIContext | None, environ: Mapping[str, str]) -> str | None:
    """The CI job's log: the context's job URL, else CI_JOB_URL (GitLab) or BUILD_URL (Jenkins)."""
    for url in (ctx.job_url if ctx else None, environ.get("CI_JOB_URL"), environ.get("BUILD_URL")):
        if url and url.strip().startswith(("https://", "http://")):
            return url.strip()
    return None
