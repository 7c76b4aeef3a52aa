"""Secrets are masked in every printed line, however they are written."""

from __future__ import annotations

import json

import pytest

from pipeline_steps import secrets
from pipeline_steps.secrets import mask, mask_obj, register_environment, register_secret, register_url_secrets


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_SECRETS", set())


def test_registered_values_are_masked_in_their_json_repr_and_url_forms() -> None:
    register_secret('pa"ss\\wörd/1')
    for form in ('pa"ss\\wörd/1', json.dumps('pa"ss\\wörd/1'), repr('pa"ss\\wörd/1'),
                 "pa%22ss%5Cw%C3%B6rd%2F1"):
        assert "ss" not in mask(f"x {form} y").replace("****", ""), form
    assert mask_obj({"k": ['pa"ss\\wörd/1'], 'pa"ss\\wörd/1': 1}) == {"k": ["****"], "****": 1}


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    assert mask("abc") == "abc"


def test_url_userinfo_and_token_query_values() -> None:
    register_url_secrets("https://oauth2:glpat-AAAA%2FBBBB@gitlab.example.com/?private_token=qqqq-1111&ref=main")
    text = mask("oauth2:glpat-AAAA%2FBBBB glpat-AAAA/BBBB qqqq-1111 ref=main")
    assert "glpat" not in text and "qqqq" not in text and "ref=main" in text


def test_a_user_name_alone_is_no_secret_but_a_token_in_its_place_is() -> None:
    register_url_secrets("ssh://deploy@10.0.0.12")
    assert mask("deploy") == "deploy"
    register_url_secrets("https://ghp_0123456789abcdefXYZ@github.com/me/app.git")
    assert mask("ghp_0123456789abcdefXYZ") == "****"


def test_environment_secrets() -> None:
    register_environment({"GITLAB_TOKEN": "glpat-token-1", "REGISTRY_PASSWORD": "hunter2hunter2",
                          "MATTERMOST_WEBHOOK_URL": "https://chat.example.com/hooks/abcdefgh12345678",
                          "GITLAB_URL": "https://u:url-pass-9@gitlab.example.com", "HOME": "/root",
                          "PATH": "/usr/bin", "CI_PROJECT_URL": "https://gitlab.example.com/g/p"})
    text = mask("glpat-token-1 hunter2hunter2 abcdefgh12345678 url-pass-9 /root /usr/bin "
                "https://gitlab.example.com/g/p")
    assert text == "**** **** **** **** /root /usr/bin https://gitlab.example.com/g/p"
