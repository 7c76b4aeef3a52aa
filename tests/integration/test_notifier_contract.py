"""The Notifier contract: FakeNotifier and MattermostNotifier (a local webhook) deliver the same way."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from pipeline_steps.adapters.fakes import FakeNotifier
from pipeline_steps.adapters.interfaces import Delivery, Notifier
from pipeline_steps.adapters.mattermost import MattermostNotifier

PATH = "/hooks/contract-secret"


@pytest.fixture(params=["fake", "real"])
def side(request: pytest.FixtureRequest) -> Iterator[tuple[Notifier, str, Callable[[], list[Any]]]]:
    if request.param == "fake":
        fake = FakeNotifier()
        yield fake, "http://127.0.0.1:9/hooks/x", lambda: fake.payloads
        return
    server: HTTPServer = request.getfixturevalue("httpserver")
    server.expect_request(PATH, method="POST").respond_with_data("ok")
    yield (MattermostNotifier(), server.url_for(PATH),
           lambda: [json.loads(req.get_data()) for req, _ in server.log])


def test_a_payload_is_delivered_once(side: tuple[Notifier, str, Callable[[], list[Any]]]) -> None:
    notifier, url, received = side
    payload = {"text": "deploy of shop: success", "attachments": [{"fields": []}]}
    delivery = notifier.send(url, payload, timeout=5, attempts=3, backoff=0)
    assert delivery == Delivery(True, 200, 1, "delivered")
    assert received() == [payload]
