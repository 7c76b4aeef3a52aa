"""The receiver's event loop asks each connection's poll flags from its attributes: the same answer as
waitress' readable()/writable() (with the receiver's writable override), in every state they read."""

from __future__ import annotations

import itertools
import select
import socket

from waitress.adjustments import Adjustments

from pipeline_steps.webhook.httpd import WRITE_WHEN_RUNNING, _Channel, _channel_flags


class _FakeServer:
    adj = Adjustments()
    active_channels: dict[int, object] = {}

    def add_task(self, task: object) -> None:
        pass

    def pull_trigger(self) -> None:
        pass


def test_channel_flags_match_readable_and_writable() -> None:
    a, b = socket.socketpair()
    try:
        channel = _Channel(_FakeServer(), a, ("127.0.0.1", 1), _FakeServer.adj, map={})  # type: ignore[arg-type]
        lookahead = _FakeServer.adj.channel_request_lookahead
        checked = 0
        for will_close, when_flushed, requests, out in itertools.product(
                (False, True), (False, True), (0, 1, 2), (0, 10, WRITE_WHEN_RUNNING - 1, WRITE_WHEN_RUNNING)):
            channel.will_close, channel.close_when_flushed = will_close, when_flushed
            channel.requests = [object()] * requests
            channel.total_outbufs_len = out
            expected = ((select.POLLIN | select.POLLPRI) if channel.readable() else 0) | (
                select.POLLOUT if channel.writable() else 0)
            assert _channel_flags(channel, lookahead) == expected, (will_close, when_flushed, requests, out)
            checked += 1
        assert checked == 48
        channel.will_close, channel.requests, channel.total_outbufs_len = False, [], 0
    finally:
        a.close()
        b.close()
