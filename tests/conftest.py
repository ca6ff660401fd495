"""Shared fixtures (helpers such as result_of live in streamlog.testing)."""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from streamlog.http.site import HTTP_LISTEN_ENV

# No server a test starts binds the HTTP listener's fixed default port (9644) of this shared
# machine unasked: its children inherit this; a test that wants HTTP gives --http-listen tcp:0.
os.environ[HTTP_LISTEN_ENV] = "none"


@pytest.fixture
def clock():
    """A task.Clock; the test fails if it leaves timers pending (stop what you start)."""
    c = Clock()
    yield c
    leftover = [call for call in c.getDelayedCalls() if call.active()]
    assert not leftover, f"timers left pending: {leftover}"
