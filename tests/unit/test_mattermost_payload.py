"""The Mattermost payload of mattermost-notify (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.adapters.mattermost import MAX_TEXT
from pipeline_steps.context import CIContext
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.mattermost_notify import (
    COLORS,
    STATUSES,
    build_payload,
    traffic_split,
    truncate,
)

CTX = CIContext(provider="gitlab", sha="5a3e1e0000011111222233334444555566667777", build_id="5a3e1e000001",
                branch="main", author="Dev <dev@example.com>", title="fix the cart",
                pipeline_url="https://gitlab.example.com/team/shop/-/pipelines/42",
                job_url="https://gitlab.example.com/team/shop/-/jobs/7",
                source_url="https://gitlab.example.com/team/shop")
NOW = datetime(2024, 5, 1, 3, 0, 0, tzinfo=UTC)


def check_format(payload: dict[str, object]) -> None:
    """Mattermost's incoming-webhook format, as the tests of the step check it."""
    allowed = {"text", "attachments", "channel", "username", "icon_url", "icon_emoji", "props", "type"}
    assert set(payload) <= allowed
    assert "text" in payload or "attachments" in payload
    assert isinstance(payload.get("text", ""), str) and len(str(payload.get("text", ""))) < MAX_TEXT
    attachments = payload.get("attachments", [])
    assert isinstance(attachments, list)
    for att in attachments:
        assert isinstance(att["fallback"], str) and att["fallback"]
        assert att["color"].startswith("#") and len(att["color"]) == 7
        for f in att.get("fields", []):
            assert set(f) == {"title", "value", "short"}
            assert isinstance(f["title"], str) and isinstance(f["value"], str)
            assert isinstance(f["short"], bool)


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_is_well_formed(status: str) -> None:
    payload = build_payload(app="shop", status=status, ctx=CTX, deploy_type="canary", weight=40,
                            services=["web", "api"], duration=95, channel="deploys", username="bot",
                            icon_url="https://example.com/i.png", timezone="Asia/Seoul", now=NOW)
    check_format(payload)
    att = payload["attachments"][0]
    assert att["color"] == COLORS[status]
    assert payload["channel"] == "deploys" and payload["username"] == "bot"
    assert "canary 40% / stable 60%" in payload["text"]
    fields = {f["title"]: f["value"] for f in att["fields"]}
    assert fields["BUILD_ID"] == \
        "[`5a3e1e000001`](https://gitlab.example.com/team/shop/-/commit/5a3e1e0000011111222233334444555566667777)"
    assert att["title_link"].endswith("/-/commit/" + CTX.sha)
    assert fields["App / services"] == "shop: web, api"
    assert fields["Author"] == "Dev <dev@example.com>" and fields["Branch"] == "main"
    assert fields["Duration"] == "1m35s"
    assert "[pipeline](https://gitlab.example.com/team/shop/-/pipelines/42)" in fields["Links"]
    assert "[job](https://gitlab.example.com/team/shop/-/jobs/7)" in fields["Links"]
    assert att["footer"].endswith("2024-05-01 12:00:00 KST")  # 03:00 UTC in Seoul


def test_failure_says_what_was_rolled_back_and_where_the_log_is() -> None:
    payload = build_payload(app="shop", status="failure", ctx=CTX,
                            rollback_info="canary removed, stable 100%",
                            log_url="https://ci.example.com/log/7", message="health gate gave up", now=NOW)
    fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}
    assert fields["Rolled back"] == "canary removed, stable 100%"
    assert fields["Log"] == "[open the log](https://ci.example.com/log/7)"
    assert payload["attachments"][0]["pretext"] == "health gate gave up"


def test_without_context_or_config() -> None:
    payload = build_payload(app="app", status="started")
    check_format(payload)
    assert "`unknown`" in payload["text"] and "channel" not in payload


def test_time_zone_is_applied() -> None:
    payload = build_payload(app="a", status="success", timezone="UTC", now=NOW)
    assert payload["attachments"][0]["footer"].endswith("2024-05-01 03:00:00 UTC")


def test_bad_status_and_weight() -> None:
    with pytest.raises(BadInput):
        build_payload(app="a", status="done")
    with pytest.raises(BadInput):
        build_payload(app="a", status="success", weight=101)


def test_traffic_split() -> None:
    assert traffic_split("canary", 40) == "canary 40% / stable 60%"
    assert traffic_split("blue-green", 100) == "new color 100% / old color 0%"
    assert traffic_split(None, None) is None


@given(st.text(max_size=300), st.integers(min_value=len(" …(truncated)"), max_value=200))
def test_truncate_never_exceeds_the_limit(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
    else:
        assert cut.endswith("(truncated)") and text.startswith(cut[: -len(" …(truncated)")].rstrip())


@given(st.text(min_size=1, max_size=50))
def test_huge_messages_stay_under_the_limit(chunk: str) -> None:
    message = chunk * (40000 // len(chunk) + 1)
    payload = build_payload(app="a", status="failure", message=message, rollback_info=message,
                            deploy_type=message)
    check_format(payload)
    assert len(payload["text"]) < MAX_TEXT


def test_rolled_back_names_the_step_that_failed_not_the_final_split() -> None:
    payload = build_payload(app="shop", status="rolled-back", ctx=CTX, deploy_type="canary-auto",
                            failed_at="canary 40 %", log_url=CTX.job_url, now=NOW)
    check_format(payload)
    fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}
    assert "(failed at canary 40 %)" in payload["text"] and "0%" not in payload["text"]
    assert fields["Failed at"] == "canary 40 %" and "Traffic" not in fields
    assert fields["Log"] == f"[open the log]({CTX.job_url})"
    # a success never shows a failed step
    ok = build_payload(app="shop", status="success", deploy_type="canary-auto", weight=70,
                       failed_at="canary 40 %", now=NOW)
    assert "failed at" not in ok["text"] and "canary 70% / stable 30%" in ok["text"]


@pytest.mark.parametrize(("env", "ctx", "want"), [
    ({"CI_JOB_URL": "https://gitlab.example.com/jobs/9"}, None, "https://gitlab.example.com/jobs/9"),
    ({"BUILD_URL": "https://jenkins.example.com/job/shop/12/"}, None, "https://jenkins.example.com/job/shop/12/"),
    ({"CI_JOB_URL": "https://gitlab.example.com/jobs/9"}, CTX, CTX.job_url),
    ({"BUILD_URL": "shop #12"}, None, None),  # not a link
    ({}, None, None),
])
def test_the_log_link_comes_from_the_ci_context(env: dict[str, str], ctx: CIContext | None,
                                                want: str | None) -> None:
    from pipeline_steps.operations.mattermost_notify import notify

    result = notify(None, ctx, status="rolled-back", dry_run=True, env=env, now=NOW)
    fields = {f["title"]: f["value"] for f in result.payload["attachments"][0]["fields"]}
    assert fields.get("Log") == (f"[open the log]({want})" if want else None)
