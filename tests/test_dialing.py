"""streamlog.dialing.connect_within: an attempt bounded on an injected clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from streamlog.dialing import ConnectTimedOut, connect_within


class NeverConnects:
    """An endpoint whose attempts never end unless cancelled."""

    def __init__(self) -> None:
        self.attempts: list[Deferred] = []

    def connect(self, factory: object) -> Deferred:
        d: Deferred = Deferred()
        self.attempts.append(d)
        return d


def test_the_attempt_is_cancelled_at_the_timeout_even_if_on_expire_raises():
    clock, endpoint = Clock(), NeverConnects()

    def on_expire() -> None:
        raise RuntimeError("a broken counter")

    outcome = connect_within(endpoint, object(), clock, 2.0, on_expire)
    failures: list = []
    outcome.addErrback(failures.append)
    with pytest.raises(RuntimeError, match="a broken counter"):
        clock.advance(2.0)  # the clock (a reactor: its log) sees on_expire's error
    assert endpoint.attempts[0].called  # cancelled: the dial does not hang
    assert len(failures) == 1 and failures[0].check(ConnectTimedOut)
    assert not clock.getDelayedCalls()
