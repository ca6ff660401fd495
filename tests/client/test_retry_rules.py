"""The resend rules the Producer and the blocking client share (streamlog.client.retry)."""

from __future__ import annotations

from streamlog import errors
from streamlog.client import retry


def test_a_not_leader_after_the_append_may_have_landed_and_a_plain_one_did_not():
    plain = errors.NotLeader("no", topic="t", partition=0, leader=None)
    after = errors.NotLeader("lost it", topic="t", partition=0, leader=None, maybe_appended=True)
    assert retry.retriable(plain) and retry.retriable(after)
    assert not retry.may_have_landed(plain) and retry.safe_to_resend(plain)
    assert retry.may_have_landed(after) and not retry.safe_to_resend(after)
    assert retry.may_have_landed(errors.ConnectionLost("x"))
    assert not retry.may_have_landed(errors.ConnectionLost("x", sent=False))


def test_given_up_never_says_not_stored_for_what_may_have_been():
    never_written = errors.ConnectionLost("the client was closed", sent=False)
    assert retry.given_up(never_written, False) is never_written
    marked = retry.given_up(never_written, True)
    assert isinstance(marked, errors.ConnectionLost) and marked.code == "CONNECTION_LOST"
    assert marked.details == {"sent": True, "maybe_appended": True} and retry.may_have_landed(marked)
    unknown = errors.UnknownTopic("gone", topic="t")
    assert retry.given_up(unknown, True).details == {"topic": "t", "maybe_appended": True}
    timeout = errors.Timeout("no answer")
    assert retry.given_up(timeout, True) is timeout  # says so already


def test_delivery_timeout_carries_attempts_last_error_and_whether_it_may_be_stored():
    e = retry.delivery_timeout("3 message(s) for t/0", 10.0, 4, errors.Timeout("slow"), True)
    assert e.code == "DELIVERY_TIMEOUT" and e.details["attempts"] == 4 and e.details["sent"] is True
    assert e.details["last_error"]["code"] == "TIMEOUT" and "4 attempt(s); last error: TIMEOUT: slow" in e.message
