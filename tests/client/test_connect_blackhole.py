"""Real dials into a black hole on loopback: both clients give up at their connect timeout.

A listening socket on 127.0.0.1 whose accept queue is full (backlog 0 holds one connection on
Linux; the test never accepts) makes the kernel drop further SYNs, as a host that is powered off
or behind a firewall does: the dial gets no answer at all, neither an accept nor a refusal.
L{black_hole} checks that a dial really goes unanswered before the tests rely on it, and the
tests are skipped where it does not (another kernel, tcp_abort_on_overflow set), rather than left
to fail now and then. (The fixture lives in tests/conftest.py: the peer transport's dials use it too.)
"""

from __future__ import annotations

import select
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from streamlog import errors
from streamlog.client.blocking import BlockingClient
from streamlog.client.connection import StreamlogClient


@pytest_twisted.ensureDeferred
async def test_the_twisted_client_gives_a_dial_into_a_black_hole_up_at_its_connect_timeout(black_hole):
    client = StreamlogClient(f"127.0.0.1:{black_hole}", reactor=reactor, request_timeout=5.0, connect_timeout=0.5,
                             reconnect_min=5.0, reconnect_max=5.0, fail_waiting_on_connect_failure=True)
    started = time.monotonic()
    d = client.call("Ping", {})
    guard = reactor.callLater(10.0, d.cancel)  # bounded even if the timeout did not work
    try:
        with pytest.raises(errors.ConnectionLost, match=r"no connection within 0.5s \(connect timeout\)") as lost:
            await d
        took = time.monotonic() - started
        assert lost.value.details["sent"] is False
        assert 0.45 <= took < 3.0, f"gave up after {took:.2f}s"
        assert not client.dialling
    finally:
        if guard.active():
            guard.cancel()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_tcp_endpoint_string_times_out_by_the_clients_timer_not_the_reactors(black_hole):
    # A tcp: string gets timeout=1 (whole seconds) for its connector, set inside connect(): the
    # client's timer of the same length must be armed first, or the reactor's fires first and the
    # caller sees Twisted's "User timeout caused connection failure." (read-only review).
    client = StreamlogClient(f"tcp:127.0.0.1:{black_hole}", reactor=reactor, request_timeout=5.0, connect_timeout=1.0,
                             reconnect_min=5.0, reconnect_max=5.0, fail_waiting_on_connect_failure=True)
    d = client.call("Ping", {})
    guard = reactor.callLater(10.0, d.cancel)  # bounded even if the timeout did not work
    try:
        with pytest.raises(errors.ConnectionLost, match=r"no connection within 1s \(connect timeout\)"):
            await d
        assert client._named.timed_out == 1
    finally:
        if guard.active():
            guard.cancel()
        await client.close()


def test_the_blocking_client_gives_a_connect_into_a_black_hole_up_at_its_connect_timeout(black_hole):
    started = time.monotonic()
    with BlockingClient(f"127.0.0.1:{black_hole}", timeout=5.0, connect_timeout=0.5) as client:
        with pytest.raises(errors.StreamlogError, match=r"timed out after 0.5s"):
            client.ping()
    took = time.monotonic() - started
    assert 0.45 <= took < 3.0, f"gave up after {took:.2f}s"


def test_the_probe_is_honest_a_dial_into_the_black_hole_stays_unanswered(black_hole):
    """What the other tests rely on: no answer within several times their connect timeout."""
    dial = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dial.setblocking(False)
    try:
        dial.connect_ex(("127.0.0.1", black_hole))
        _, answered, _ = select.select([], [dial], [], 1.5)
        assert not answered
    finally:
        dial.close()
