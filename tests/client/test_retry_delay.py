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


def test_an_election_in_progress_is_asked_again_at_the_minimum_backoff_not_further_out():
    from streamlog import errors
    from streamlog.client.retry import count_failure

    election = errors.LeaderNotAvailable("electing")
    failures = 0
    for _ in range(10):
        failures = count_failure(failures, election)
    assert failures == 2  # retry_delay(.., 2): between retry_backoff_min/2 and retry_backoff_min
    lost = errors.ConnectionLost("gone")
    assert count_failure(count_failure(failures, lost), lost) == 4  # other errors back off as before
