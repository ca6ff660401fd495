"""Fixtures of the HTTP listener's tests."""

from __future__ import annotations

import pytest

from streamlog.testing import BrokerHarness


@pytest.fixture
def harness(clock):
    """A broker on the test's Clock, with StringTransport connections."""
    h = BrokerHarness(clock=clock)
    yield h
    h.stop()
