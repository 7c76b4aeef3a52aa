"""Pure logic of the webhook receiver: classification, delivery keys, token check, action argv."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.adapters.jenkins import job_path, trigger_url
from pipeline_steps.errors import BadInput
from pipeline_steps.webhook.actions import local_argv, parameters
from pipeline_steps.webhook.server import (
    ZERO_SHA,
    classify,
    commit_ids,
    delivery_ids,
    delivery_key,
    nesting_within,
    parse_body,
    token_matches,
)
from pipeline_steps.webhook.store import Delivery

SHA = "0123456789abcdef0123456789abcdef01234567"


def push(ref: str = "refs/heads/develop", sha: str = SHA, **extra: object) -> dict[str, object]:
    return {"object_kind": "push", "ref": ref, "checkout_sha": sha, "after": sha,
            "project": {"id": 7, "path_with_namespace": "team/app"}, "user_username": "dev", **extra}


def delivery(sha: str | None = SHA, branch: str | None = "develop") -> Delivery:
    return Delivery(key="k", received_at=0.0, event="push", ref=f"refs/heads/{branch}", branch=branch,
                    sha=sha, project="team/app", user="dev", status="pending")


def test_push_to_a_deploying_branch_is_acted_on() -> None:
    info = classify(push(), ("develop",))
    assert info.ignored is None
    assert (info.event, info.branch, info.sha, info.project, info.user) == (
        "push", "develop", SHA, "team/app", "dev")


@pytest.mark.parametrize(("payload", "reason"), [
    (push(ref="refs/heads/main"), "branch 'main' does not deploy"),
    (push(ref="refs/tags/v1"), "is not a branch"),
    ({"object_kind": "merge_request", "ref": "refs/heads/develop"}, "is not a push"),
    ({"object_kind": "tag_push", "ref": "refs/tags/v1"}, "is not a push"),
    (push(sha=ZERO_SHA, checkout_sha=None), "was deleted"),
    ({}, "is not a push"),
])
def test_other_events_and_branches_are_ignored_with_a_reason(payload: dict[str, object], reason: str) -> None:
    info = classify(payload, ("develop",))
    assert info.ignored is not None and reason in info.ignored


def test_several_branches_can_deploy() -> None:
    assert classify(push(ref="refs/heads/release"), ("develop", "release")).ignored is None


@given(st.dictionaries(st.text(max_size=15), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10), max_size=8))
def test_classify_never_raises_on_any_json_object(payload: dict[str, object]) -> None:
    info = classify(payload, ("develop",))
    assert info.ignored is not None or (info.event == "push" and info.branch == "develop" and info.sha)


def test_delivery_key_prefers_idempotency_key_then_event_uuid_then_body_hash() -> None:
    body = b'{"a": 1}'
    assert delivery_key({"Idempotency-Key": "idem", "X-Gitlab-Event-UUID": "uuid"}, body) == "idem"
    assert delivery_key({"X-Gitlab-Event-UUID": "uuid"}, body) == "uuid"
    assert delivery_key({}, body) == delivery_key({"Idempotency-Key": "  "}, body)
    assert delivery_key({}, body).startswith("sha256:")
    assert delivery_key({}, body) != delivery_key({}, b'{"a": 2}')


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_body_hash_keys_differ_exactly_when_bodies_differ(a: bytes, b: bytes) -> None:
    assert (delivery_key({}, a) == delivery_key({}, b)) == (a == b)


@pytest.mark.parametrize(("given_token", "ok"), [
    ("s3cret-token", True), ("s3cret-tokeN", False), ("", False), (None, False), ("s3cret-token ", False),
    ("ünïcode", False),
])
def test_token_matches_only_the_exact_secret(given_token: str | None, ok: bool) -> None:
    assert token_matches(given_token, "s3cret-token") is ok


def test_jenkins_job_paths_handle_folders_and_quoting() -> None:
    assert job_path("deploy") == "/job/deploy"
    assert job_path("team/app/deploy") == "/job/team/job/app/job/deploy"
    assert job_path("my job") == "/job/my%20job"
    assert trigger_url("http://ci:8080/", "a/b") == "http://ci:8080/job/a/job/b/buildWithParameters"
    with pytest.raises(ValueError):
        job_path("//")


@given(st.lists(st.text(alphabet=st.characters(exclude_characters="/", exclude_categories=["Cs"]),
                        min_size=1, max_size=10), min_size=1, max_size=4))
def test_job_path_has_one_job_segment_per_folder(parts: list[str]) -> None:
    path = job_path("/".join(parts))
    assert path.count("/job/") == len(parts)


def test_parameters_carry_deploy_type_commit_build_id_and_branch() -> None:
    assert parameters(delivery(), "canary-auto") == {
        "DEPLOY_TYPE": "canary-auto", "COMMIT_SHA": SHA, "BUILD_ID": SHA[:12], "COMMIT_BRANCH": "develop",
        "PS_DELIVERY": "k"}  # the delivery key travels on (issue 16), so the far side can spot a repeat


def test_local_argv_fills_placeholders_per_word_without_a_shell() -> None:
    argv = local_argv("deploy --type {deploy_type} --build-id {build_id} --note '{branch} x;rm -rf /'",
                      delivery(), "canary-auto", "/etc/ps.yaml")
    assert argv[:5] == [sys.executable, "-m", "pipeline_steps", "--config", "/etc/ps.yaml"]
    assert argv[5:] == ["deploy", "--type", "canary-auto", "--build-id", SHA[:12], "--note",
                        "develop x;rm -rf /"]


@pytest.mark.parametrize("template", ["deploy {unknown}", "deploy 'unclosed", "deploy {0}"])
def test_bad_local_templates_are_bad_input(template: str) -> None:
    with pytest.raises(BadInput):
        local_argv(template, delivery(), "canary-auto")


def merge(action: str = "merge", target: str = "develop", **attrs: object) -> dict[str, object]:
    return {"object_kind": "merge_request", "user": {"username": "dev"}, "project": {"id": 7},
            "object_attributes": {"action": action, "target_branch": target, "merge_commit_sha": SHA,
                                  "last_commit": {"id": "e" * 40}, **attrs}}


def test_a_merge_into_a_deploying_branch_is_a_trigger_of_its_merge_commit() -> None:
    info = classify(merge(), ("develop",))
    assert info.ignored is None
    assert (info.event, info.branch, info.ref, info.sha, info.user) == (
        "merge_request", "develop", "refs/heads/develop", SHA, "dev")
    assert commit_ids(info) == ([f"merge:develop:{SHA}"], [f"push:develop:{SHA}"])
    assert commit_ids(classify(push(), ("develop",))) == ([f"push:develop:{SHA}"], [f"merge:develop:{SHA}"])
    squashed = classify(merge(merge_commit_sha=None, squash_commit_sha="5" * 40), ("develop",))
    assert squashed.sha == "5" * 40
    fast_forward = classify(merge(merge_commit_sha=None), ("develop",))
    assert fast_forward.sha == "e" * 40


@pytest.mark.parametrize(("payload", "reason"), [
    (merge(action="open"), "is not a push or a merge"),
    (merge(action="update"), "is not a push or a merge"),
    (merge(target="main"), "merge into 'main' does not deploy"),
    ({"object_kind": "merge_request", "object_attributes": "x"}, "is not a push or a merge"),
])
def test_other_merge_request_events_are_ignored(payload: dict[str, object], reason: str) -> None:
    info = classify(payload, ("develop",))
    assert info.ignored is not None and reason in info.ignored
    assert commit_ids(info) == ([], [])


def test_long_keys_are_hashed_never_cut() -> None:
    a, b = "k" * 300 + "a", "k" * 300 + "b"
    assert delivery_key({"Idempotency-Key": a}, b"") != delivery_key({"Idempotency-Key": b}, b"")
    assert delivery_key({"Idempotency-Key": a}, b"") == "sha256:" + hashlib.sha256(a.encode()).hexdigest()
    assert delivery_key({"Idempotency-Key": "short"}, b"") == "short"
    assert delivery_key({"idempotency-key": "lower"}, b"") == "lower"


def test_every_delivery_is_known_by_its_body_and_each_header() -> None:
    body = b'{"a": 1}'
    ids = delivery_ids({"Idempotency-Key": "i", "X-Gitlab-Event-UUID": "u"}, body)
    assert ids == [f"body:{hashlib.sha256(body).hexdigest()}", "idem:i", "uuid:u"]
    assert delivery_ids({}, body) == ids[:1]


def test_json_depth_limit() -> None:
    assert parse_body(b"[" * 400 + b"]" * 400, 400) == (None, "body is not a JSON object")
    assert parse_body(b'{"a":' + b"[" * 399 + b"]" * 399 + b"}", 400)[1] is None
    too_deep = b'{"a":' + b"[" * 400 + b"]" * 400 + b"}"
    assert parse_body(too_deep, 400)[1] == "JSON nested deeper than 400 levels"
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert parse_body(deep, 400) == (None, "JSON nested deeper than 400 levels")
    assert nesting_within({"a": [{"b": []}]}, 4) and not nesting_within({"a": [{"b": []}]}, 3)


def test_short_tokens_are_refused() -> None:
    from pipeline_steps.cli.webhook import read_token

    with pytest.raises(BadInput, match="at least 16"):
        read_token("T", {"T": "x" * 15})
    assert read_token("T", {"T": "x" * 16}) == "x" * 16


def test_local_resume_reads_the_exit_code_a_finished_run_left(tmp_path: Path) -> None:
    from pipeline_steps.webhook.actions import FinalFailure, LocalDeployAction

    action = LocalDeployAction(template="status", run_dir=str(tmp_path))
    d = delivery()
    log, rc = action.files(d)
    assert action.resume(d) is None  # never ran (or killed before it ended): run it
    log.write_text("deploying\nall healthy\n")
    rc.write_text("0\n")
    assert action.resume(d) == "`ps status` done (adopted after a restart): all healthy"
    rc.write_text("1\n")
    with pytest.raises(FinalFailure, match="exited 1"):
        action.resume(d)
    rc.write_text("3\n")
    assert action.resume(d) is None  # unreachable then: worth another attempt
