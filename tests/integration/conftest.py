"""Real processes on 127.0.0.1 (helpers in streamlog.testing); every one stopped by its pid."""

from __future__ import annotations

import pytest


@pytest.fixture
def daemons():
    """Collects the daemons a test starts and stops each (by its pid) afterwards."""
    started: list = []
    yield started
    for daemon in started:
        daemon.stop()
