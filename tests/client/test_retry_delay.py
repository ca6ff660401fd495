"""The client's retry timing: the first retry at once, later ones backing off; one failure per round."""

from __future__ import annotations

import random

from streamlog.client.retry import backoff_policy, first_of_round, retry_delay


def test_the_first_retry_goes_at_once_and_the_later_ones_back_off_from_the_minimum():
    backoff = backoff_policy(0.1, 1.0, random.Random(3))
    assert retry_delay(backoff, 0) == 0.0
    assert retry_delay(backoff, 1) == 0.0
    second = [retry_delay(backoff, 2) for _ in range(200)]
    assert 0.05 <= min(second) and max(second) <= 0.1
    later = [retry_delay(backoff, 30) for _ in range(200)]
    assert 0.5 <= min(later) and max(later) <= 1.0


def test_batches_failing_together_count_once_and_a_failed_resend_counts_again():
    assert first_of_round(others_waiting=False, attempts=1)  # the first of a window to fail
    assert not first_of_round(others_waiting=True, attempts=1)  # the rest of that window
    assert first_of_round(others_waiting=True, attempts=2)  # a resend that failed: a new round
