"""When to ask again, and how long to wait first (pure, no Twisted).

Every client of the library shares these rules:

- L{backoff_policy}: exponential backoff with jitter between attempts, and
  L{retry_delay}: the first retry after a success goes at once (a failover
  needs one metadata round trip, not a backoff), the later ones back off.
- L{retriable}: errors after which asking again, maybe at another node, may
  work: leadership moved (C{NOT_LEADER}), an election is on
  (C{LEADER_NOT_AVAILABLE}), the node is stopping (C{SHUTTING_DOWN}) or full
  (C{TOO_MANY_CONNECTIONS}, C{TOO_MANY_WAITING_POLLS}), the request went to a
  node that is not the controller (C{NOT_CONTROLLER}), or no answer came
  (C{CONNECTION_LOST}, C{TIMEOUT}).
- L{may_have_landed}: of those, the ones after which a write may already
  have been applied, so that writing it again may duplicate it (until
  idempotent producers): an answer that never came for a request that was
  written, or a C{NOT_LEADER} that says C{maybe_appended: true} (the old
  leader appended it, the next may commit it).  Any other refusal, or a
  request never written (C{sent: false}), cannot have been applied.
- L{delivery_timeout} and L{given_up}: the error a write is failed with
  once its delivery timeout passed, or on an error that does not heal,
  saying whether an earlier attempt may have stored it (the Producer and the
  blocking client report the same).
- L{wants_metadata}: errors that say the client's picture of the cluster may
  be stale, so its metadata should be asked again.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from streamlog import errors

#: Default delivery timeout (seconds): as Kafka's delivery.timeout.ms (the Producer's, and the
#: blocking client's when it has no request timeout either).
DEFAULT_DELIVERY_TIMEOUT = 120.0

#: Refusals: the node did nothing with the request; asking again (there, or where the hint points) may work.
REFUSALS: tuple[type[errors.StreamlogError], ...] = (
    errors.NotLeader, errors.LeaderNotAvailable, errors.NotController, errors.ShuttingDown,
    errors.TooManyConnections, errors.TooManyWaitingPolls, errors.TooManyOpenFiles,
)

#: Seconds a connection attempt may take before it counts as failed (C{connect_timeout} of the
#: Twisted and the blocking clients): Kafka's C{socket.connection.setup.timeout.ms}.  A dial to a
#: host that drops packets (powered off, a firewall) otherwise waits for Twisted's 30 s (the
#: OS's SYN retries, about 2 min, for a plain socket), and the node stays "attempting" for all
#: that time even once the metadata says it is back.  10 s still covers three lost SYNs (Linux
#: sends them again after 1, 3 and 7 s) and a slow name lookup.
DEFAULT_CONNECT_TIMEOUT = 10.0


def check_connect_timeout(connect_timeout: float | None) -> None:
    """@raise ValueError: C{connect_timeout} is neither None nor a positive number of seconds."""
    if connect_timeout is not None and not 0 < connect_timeout < float("inf"):
        raise ValueError(f"connect_timeout must be positive and finite, in seconds (or None: no timeout of the client's own), "
                         f"not {connect_timeout!r}")

#: Seconds of silence with requests in flight before a node is suspect (the Twisted and the
#: blocking clients' C{stall_timeout}).
DEFAULT_STALL_TIMEOUT = 0.5

#: Longest gap (seconds) between two reports of one stall: the gap starts at the recheck
#: (C{stall_timeout}/5) and doubles up to this, since each report costs a Metadata request
#: (C{stall_recheck_max}).
DEFAULT_STALL_RECHECK_MAX = 2.0

#: Seconds during which UNKNOWN_TOPIC for a topic the client saw exist is asked again
#: (C{unknown_topic_grace}, L{UnknownTopicGrace}).
DEFAULT_UNKNOWN_TOPIC_GRACE = 2.0

#: No answer came: the request may or may not have been applied (unless it was never written).
NO_ANSWER: tuple[type[errors.StreamlogError], ...] = (errors.ConnectionLost, errors.Timeout)

RETRIABLE = REFUSALS + NO_ANSWER

#: Errors after which the metadata (who leads what, which nodes exist) should be fetched again.
STALE_METADATA: tuple[type[errors.StreamlogError], ...] = (
    errors.NotLeader, errors.LeaderNotAvailable, errors.NotController, errors.ShuttingDown,
    errors.ConnectionLost, errors.Timeout,
)


def retriable(error: BaseException) -> bool:
    """Whether asking again (after a backoff, maybe at another node) may succeed."""
    return isinstance(error, RETRIABLE) and not isinstance(error, errors.DeliveryTimeout)


def never_sent(error: BaseException) -> bool:
    """Whether the request is known never to have been written (C{sent: false} in its details)."""
    return isinstance(error, errors.StreamlogError) and error.details.get("sent", True) is False


def may_have_landed(error: BaseException) -> bool:
    """Whether a failed write may still have been applied (so that writing it again may duplicate it)."""
    if not isinstance(error, errors.StreamlogError):
        return False
    if error.details.get("maybe_appended") is True:
        return True  # a NOT_LEADER after the append, or a write given up after such an attempt
    return isinstance(error, NO_ANSWER) and not never_sent(error)


def safe_to_resend(error: BaseException) -> bool:
    """Retriable, and known not to have been applied: resending cannot duplicate anything.

    A plain C{NOT_LEADER} is a refusal (nothing of the request was appended,
    or what was is replaced by another leader's entry and can never commit);
    one with C{maybe_appended: true} is not.
    """
    return retriable(error) and not may_have_landed(error)


def delivery_timeout(what: str, timeout: float, attempts: int, last: errors.StreamlogError | None,
                     maybe_landed: bool) -> errors.DeliveryTimeout:
    """The error of a write retried until its delivery timeout passed: C{sent} says whether
    an attempt may have stored it (see L{may_have_landed})."""
    why = f"; last error: {last.code}: {last.message}" if last is not None else ""
    return errors.DeliveryTimeout(
        f"{what} were not acknowledged within the delivery timeout of {timeout:g}s ({attempts} attempt(s){why})",
        timeout=timeout, attempts=attempts, last_error=last.to_wire() if last is not None else None,
        sent=maybe_landed)


def given_up(error: errors.StreamlogError, maybe_landed: bool) -> errors.StreamlogError:
    """The error to fail a write with when retrying stops on C{error}: C{error} itself, or, if
    an earlier attempt may have stored the write (C{maybe_landed}) and C{error} does not say
    so, the same error marked C{maybe_appended: true} (and C{sent: true} for a
    C{CONNECTION_LOST} that claims the last attempt was never written): never "not stored"
    for what may be."""
    if not maybe_landed or may_have_landed(error):
        return error
    details = {**error.details, "maybe_appended": True}
    if "sent" in details:
        details["sent"] = True
    marked = type(error)(error.message + " (an earlier attempt may have stored it)", **details)
    marked.code = error.code
    return marked


class UnknownTopicGrace:
    """When C{UNKNOWN_TOPIC} is asked again: for a topic the client saw exist (a Metadata answer
    listed it, it created or auto-created it), for C{grace} seconds from the first such answer.

    Right after a topic is made, a node whose metadata lags behind the controller says it does
    not know it; a topic never seen fails at once, and one deleted elsewhere once the grace is
    over.  Shared by the Twisted and the blocking clients; C{now} is the caller's clock.
    """

    def __init__(self, grace: float) -> None:
        if grace < 0:
            raise ValueError("unknown_topic_grace must be at least 0 (0: off)")
        self.grace = grace
        self._seen: set[str] = set()
        self._unknown_since: dict[str, float] = {}

    def seen(self, topic: str) -> None:
        """The topic exists (a Metadata answer listed it, a CreateTopic of ours succeeded)."""
        self._seen.add(topic)
        self._unknown_since.pop(topic, None)

    def forget(self, topic: str) -> None:
        """The topic is gone (our own DeleteTopic): no grace for it."""
        self._seen.discard(topic)
        self._unknown_since.pop(topic, None)

    def applies(self, topic: str | None, now: float) -> bool:
        """Whether an C{UNKNOWN_TOPIC} answer for C{topic} is asked again now; the first such
        answer starts the grace."""
        if topic is None or not self.grace or topic not in self._seen:
            return False
        first = self._unknown_since.setdefault(topic, now)
        if now - first < self.grace:
            return True
        self.forget(topic)  # gone for good, as far as we can tell
        return False


def wants_metadata(error: BaseException) -> bool:
    """Whether the error says the client's view of leaders and nodes may be stale."""
    return isinstance(error, STALE_METADATA)


def backoff_policy(minimum: float, maximum: float, rng: _random.Random | None = None) -> Callable[[int], float]:
    """Exponential backoff with "equal jitter" for L{ClientService}.

    After the n-th failed attempt (n >= 1) the wait is between d/2 and d,
    d = min(maximum, minimum * 2**(n-1)).
    """
    rng = rng or _random.Random()

    def policy(attempt: int) -> float:
        delay = min(maximum, minimum * (2 ** min(max(attempt - 1, 0), 64)))
        return delay / 2 + rng.random() * delay / 2

    return policy




def retry_delay(backoff: Callable[[int], float], failures: int) -> float:
    """The wait before the next attempt after C{failures} failed ones in a row.

    The first retry goes at once: the error that caused it (a leader's connection lost, a
    C{NOT_LEADER}, C{LEADER_NOT_AVAILABLE}) has marked the metadata stale, and the attempt first
    fetches it (rate-limited by the client's C{metadata_min_interval}), so that a failover that
    is already over costs one round trip.  From the second on: C{backoff(failures - 1)}, so the
    second waits C{retry_backoff_min} (with jitter), and so on up to C{retry_backoff_max}.
    """
    if failures <= 1:
        return 0.0
    return backoff(failures - 1)


def first_of_round(others_waiting: bool, attempts: int) -> bool:
    """Whether a failed batch counts as a new failure of its partition for the backoff.

    A batch that was sent again (C{attempts > 1}) failed a retry round of its own; of the
    batches in flight together when they fail (a lost connection fails them all at once) only
    the first counts (no others were waiting to be retried yet).
    """
    return attempts > 1 or not others_waiting


def count_failure(failures: int, error: BaseException) -> int:
    """The partition's (or call's) failures in a row after one more, for L{retry_delay}.

    C{LEADER_NOT_AVAILABLE} says an election is on: it ends within about an election timeout,
    and asking again costs one (shared, rate-limited) metadata fetch, so its retries stay at
    the second step (C{retry_backoff_min}, with jitter) instead of backing off further (seen:
    a failover whose election took 0.3 s waited 0.1 + 0.2 s more in backoff).  Every other
    error backs off as usual.
    """
    if isinstance(error, errors.LeaderNotAvailable):
        return min(failures + 1, 2)
    return failures + 1
