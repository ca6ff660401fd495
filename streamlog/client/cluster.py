"""The cluster client: a bootstrap list, a metadata cache, one connection per node, routing and retries.

L{ClusterClient} asks any node of its bootstrap list for the cluster's
C{Metadata} (nodes, controller, and per partition its leader and term), keeps
it in a L{ClusterView}, opens one L{StreamlogClient} per node when it first
needs it (closing it once the node leaves the metadata), and sends each
partition's requests to that partition's leader: C{Send}, C{SendBatch},
C{Poll}, C{ListOffsets}.  Topic administration goes to the controller; the
other methods go to any node.

When an attempt fails with an error that may heal (L{retry.retriable}:
C{NOT_LEADER}, C{LEADER_NOT_AVAILABLE}, C{NOT_CONTROLLER}, C{SHUTTING_DOWN},
a lost connection, a timeout, ...) the client takes the error's hint (the
new leader's id, address and term) or marks its metadata stale and asks for
it again (at most once per C{metadata_min_interval}, shared by every request
waiting), then tries again, at once when a hint names another node, else
after an exponential backoff with jitter, until the call's C{timeout}
passes; then the last error is the call's.  Reads (C{Poll}, C{ListOffsets},
C{Metadata}, C{DescribeTopic}, ...) are retried after any of those errors.
Writes (C{Send}, C{SendBatch}, topic administration) only after errors that
guarantee nothing was applied (a refusal, or a request never written):
after a lost connection or a timeout of a written request the error goes to
the caller, who decides whether to risk a duplicate.  The L{Producer}
decides that for its batches (it resends, within its delivery timeout).

A server without C{Metadata} (streamlog before clusters) answers
C{METHOD_NOT_FOUND}: the client then treats the node that answered as the
only node, leading every partition, and learns partition counts from
C{DescribeTopic}.  The metadata is fetched again every C{metadata_max_age}
seconds, for the topics in use, and whenever an error says it is stale.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import requests, retry
from streamlog.client.addresses import (
    DEFAULT_ADDRESS,
    address_key,
    connect_timeout_for,
    describe_address,
    parse_bootstrap,
)
from streamlog.client.connection import StreamlogClient, endpoint_for
from streamlog.client.metadata import ClusterView, MetadataAnswer, TopicInfo
from streamlog.client.partitioning import Partitioner
from streamlog.client.requests import PartitionBound
from streamlog.client.retry import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STALL_RECHECK_MAX,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_UNKNOWN_TOPIC_GRACE,
    check_connect_timeout,
)
from streamlog.partitioner import partition_for_key

#: Where a request goes: (the node's address key, its client).
Target = tuple[str, StreamlogClient]


#: Failed connection attempts in a row after which a node connection nothing waits for stops
#: dialling until a request or news of the node needs it (see ClusterClient).
DEFAULT_IDLE_DIAL_LIMIT = 8


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _chain(source: Deferred) -> Deferred:
    """A new Deferred with C{source}'s result, leaving C{source}'s own chain untouched."""
    out: Deferred = Deferred()

    def forward(result: Any) -> Any:
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        return result

    source.addBoth(forward)
    return out


class _Call:
    """One request, retried where the errors point until it succeeds or its deadline passes.

    @param route: returns (or fires with) the L{Target} of the next attempt;
        may fail, e.g. with L{errors.UnknownTopic} (final) or
        L{errors.LeaderNotAvailable} (retried).
    @param resend_ok: whether errors that may have left the request applied
        (a lost connection or a timeout after it was written) are retried too.
    @param final: errors that end the call at once, though retriable (the
        caller retries otherwise: L{ClusterClient._server_routed}).
    """

    def __init__(self, client: ClusterClient, method: str, params: Any, route: Callable[[], Any],
                 timeout: float | None, resend_ok: bool, expect_answer: bool = True,
                 topic: str | None = None, partition: int | None = None,
                 attempt_timeout: float | None = None,
                 on_retry: Callable[[errors.StreamlogError, float], object] | None = None,
                 final: tuple[type[errors.StreamlogError], ...] = ()) -> None:
        self.client = client
        self.on_retry = on_retry
        self.final = final
        self.method = method
        self.params = params
        self.route = route
        self.resend_ok = resend_ok
        self.expect_answer = expect_answer
        self.topic = topic
        self.partition = partition
        self.attempt_timeout = attempt_timeout if attempt_timeout is not None else client.request_timeout
        now = client.clock.seconds()
        self.deadline = None if timeout is None else now + timeout
        self.deferred: Deferred = Deferred(self._cancel)
        self.failures = 0
        self.hinted = 0
        self.attempts = 0
        self.last_error: errors.StreamlogError | None = None
        self._timer: IDelayedCall | None = None
        self._inner: Deferred | None = None
        self._target: str | None = None

    def start(self) -> Deferred:
        self.client._calls.add(self)
        self.deferred.addBoth(self._done)
        self._attempt()
        return self.deferred

    def _done(self, result: Any) -> Any:
        self.client._calls.discard(self)
        return result

    def abort(self, error: errors.StreamlogError) -> None:
        """Stop trying: the client is closing."""
        if self.deferred.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inner, self._inner = self._inner, None
        self.deferred.errback(error)
        if inner is not None:
            inner.cancel()  # its outcome is dropped: the call has its error

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.client.clock.seconds()

    def _attempt(self) -> None:
        self._timer = None
        if self.deferred.called:
            return
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            self._give_up()
            return
        d = self._inner = maybeDeferred(self.route)
        if remaining is not None and not d.called:
            # The route may wait for a metadata fetch (rate-limited): not past the call's deadline.
            self._timer = self.client.clock.callLater(remaining, self._route_overdue, d)
        d.addCallback(self._send_to)
        d.addBoth(self._settled)

    def _route_overdue(self, route: Deferred) -> None:
        self._timer = None
        if self._inner is route and not self.deferred.called:
            self._inner = None
            self._give_up()  # the route's outcome is dropped (_send_to sends nothing now)

    def _send_to(self, target: Target) -> Deferred | None:
        if self.deferred.called:
            return None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        key, node = target
        self._target = key
        self.attempts += 1
        timeout = self.attempt_timeout
        remaining = self._remaining()
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = remaining
        bound = None
        if self.topic is not None and self.partition is not None:
            bound = self.client.partition_bound(self.topic, self.partition)
        return node.call(self.method, self.params, timeout=timeout, expect_answer=self.expect_answer, bound=bound)

    def _settled(self, result: Any) -> None:
        self._inner = None
        if self._timer is not None and self._timer.active():  # a route that failed before its deadline
            self._timer.cancel()
        self._timer = None
        if self.deferred.called:  # cancelled, or given up
            if isinstance(result, Failure):
                result.trap(Exception)
            return
        if not isinstance(result, Failure):
            self.client._node_ok(self._target)
            self.deferred.callback(result)
            return
        error = result.value
        if not isinstance(error, errors.StreamlogError):
            self.deferred.errback(result)
            return
        self.last_error = error
        if isinstance(error, self.final):
            self.deferred.errback(error)
            return
        graced = isinstance(error, errors.UnknownTopic) and self.client.in_unknown_topic_grace(self.topic)
        if not graced and (self.client._closed or not retry.retriable(error)
                           or not (self.resend_ok or retry.safe_to_resend(error))):
            self.deferred.errback(error)
            return
        immediate = self.client.learn(error, self.topic, self.partition, self._target)
        self.failures = retry.count_failure(self.failures, error)
        if immediate and self.hinted < 2:
            self.hinted += 1
            delay = 0.0
        else:
            delay = retry.retry_delay(self.client.backoff, self.failures)
        remaining = self._remaining()
        if remaining is not None and delay >= remaining:
            self.deferred.errback(error)
            return
        if self.on_retry is not None:
            try:
                self.on_retry(error, delay)
            except Exception:
                self.client._log.failure("an on_retry hook failed")
        self._timer = self.client.clock.callLater(delay, self._attempt)

    def _give_up(self) -> None:
        if self.last_error is not None:
            self.deferred.errback(self.last_error)
        else:
            self.deferred.errback(errors.Timeout(f"no time left for {self.method}", method=self.method, sent=False))

    def _cancel(self, _: Deferred) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._inner is not None:
            self._inner.cancel()


class ClusterClient:
    """A client of a whole cluster (or of one node), from a bootstrap list.

    @param bootstrap: where to ask for the metadata: a list of addresses, or
        one string of addresses separated by commas
        (C{"127.0.0.1:7071,127.0.0.1:7072"}); each is C{HOST:PORT},
        C{tcp:HOST:PORT}, C{unix:/path}, any Twisted client endpoint string,
        C{(host, port)} or an endpoint object.
    @param request_timeout: seconds a call may take, retries included, unless
        the call says otherwise; None waits forever.
    @param reconnect_min, reconnect_max: backoff between connection attempts to a node.
    @param connect_timeout: seconds a connection attempt to a node may take
        (default 10 s, Kafka's C{socket.connection.setup.timeout.ms}); one
        that takes longer fails as a refused one does (see
        L{StreamlogClient}): the requests waiting for it go elsewhere or wait
        for fresh metadata, and the node can be dialled again on news of it
        instead of staying "attempting" for Twisted's 30 s.  A bootstrap
        C{tcp:}/C{unix:} string naming its own C{timeout=} keeps it.  None: the
        endpoints' own timeout (30 s).
    @param retry_backoff_min, retry_backoff_max: backoff between attempts of a
        call (exponential, with jitter).
    @param metadata_max_age: seconds after which the metadata is fetched again
        even if nothing failed.
    @param metadata_min_interval: fetches of the metadata start at least this
        far apart (errors from many requests share one fetch).
    @param endpoint_factory: makes the endpoint of a node from its address
        (default: Twisted's, from the string); tests give in-memory ones.
    @param node_clients: connections that exist already, by address (used
        for those addresses instead of new ones, and closed by L{close}).
    @param stall_timeout: a node connection with requests in flight that
        received nothing for this long (past what a long Poll asked the server
        to wait) is suspect.  If partition-bound requests (Send, SendBatch,
        Poll, ListOffsets of a known partition) are among those in flight,
        another node is asked for the metadata and, if one of their partitions
        has a leader of a later term than the one it was sent for (or the
        cluster sees the node down), the connection is dropped, so that what
        was in flight fails with C{CONNECTION_LOST} and is sent again where the
        leader is now (the idempotent L{Producer} resends it, in order, without
        duplicates).  Otherwise it is waited for (asked again after 0.1 s,
        then twice as long each time up to C{stall_recheck_max}); coordinator
        and admin calls alone never drop a connection (they end at their
        timeout).
        Meant for a paused (SIGSTOP) or cut-off node, whose TCP connection
        stays up and silent; keep it well above a healthy answer's p99.  None
        turns it off (then only C{request_timeout} ends such a wait).
    @param stall_recheck_max: the longest gap between two Metadata requests
        about one stalled connection (see C{stall_timeout}).
    @param unknown_topic_grace: C{UNKNOWN_TOPIC} for a topic this client saw
        exist (a Metadata answer listed it, or its own C{CreateTopic}
        succeeded) is retried like a retriable error for this many seconds
        from the first such answer: right after a topic is created, a node
        whose metadata lags answers so.  A topic never seen fails at once; a
        topic deleted elsewhere fails once the grace is over.  0 turns it off.
    @param idle_dial_limit: a node connection whose last this many attempts
        failed, with no request waiting for it, stops dialling; a request
        routed to the node dials it again (once per backoff), and so does
        news that the node is back (below).  None dials for ever.

    News of a node: when a Metadata answer says a node is up that the client
    last saw down (or never saw), or names a node the leader of a partition
    in use in a later term, or a C{NOT_LEADER} hint names a new leader, the
    client dials that node at once if its connection is down (its backoff,
    up to C{reconnect_max}, starts again), and requests routed there wait
    for that attempt (within their timeout) instead of failing at once.  A
    node that keeps refusing is dialled at most once per C{reconnect_min}
    however often it is named, and otherwise at the pace of its backoff.  News
    of a node whose connection is attempting already (a dial that may have
    started while the node was dark, which ends only at C{connect_timeout})
    is kept: should that attempt fail, the next follows it C{reconnect_min}
    later instead of after the backoff.
    """

    _log = Logger()

    def __init__(self, bootstrap: Any = DEFAULT_ADDRESS, clock: IReactorTime | None = None, reactor: Any = None,
                 request_timeout: float | None = 30.0, reconnect_min: float = 0.1, reconnect_max: float = 10.0,
                 retry_backoff_min: float = 0.1, retry_backoff_max: float = 1.0,
                 metadata_max_age: float = 300.0, metadata_min_interval: float | None = None,
                 rng: _random.Random | None = None,
                 endpoint_factory: Callable[[Any], Any] | None = None,
                 node_clients: Mapping[Any, StreamlogClient] | None = None,
                 stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
                 unknown_topic_grace: float = DEFAULT_UNKNOWN_TOPIC_GRACE,
                 idle_dial_limit: int | None = DEFAULT_IDLE_DIAL_LIMIT,
                 stall_recheck_max: float = DEFAULT_STALL_RECHECK_MAX,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> None:
        if stall_recheck_max <= 0:
            raise ValueError("stall_recheck_max must be positive")
        check_connect_timeout(connect_timeout)
        if idle_dial_limit is not None and idle_dial_limit < 1:
            raise ValueError("idle_dial_limit must be at least 1 (or None: dial for ever)")
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive (or None: off)")
        if reactor is None and (clock is None or endpoint_factory is None):
            reactor = _default_reactor()
        self.clock: Any = clock if clock is not None else reactor
        self.reactor = reactor
        self.request_timeout = request_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.metadata_max_age = metadata_max_age
        self.stall_timeout = stall_timeout
        self.stall_recheck_max = stall_recheck_max
        self.unknown_topic_grace = unknown_topic_grace
        self.idle_dial_limit = idle_dial_limit
        #: Early dials made on news of a node (for tests, metrics).
        self.news_dials = 0
        self._refused_closed = 0  # refused_unsent of node connections closed since
        self._unknown_topics = retry.UnknownTopicGrace(unknown_topic_grace)
        self._stall_checks: set[str] = set()  # address keys whose stall is being looked into now
        self._fetch_attempt: tuple[str, Deferred] | None = None  # the node a metadata fetch waits on
        #: Connections dropped because their node stalled while its partitions moved (for tests, metrics).
        self.stalls_dropped = 0
        self.metadata_min_interval = retry_backoff_min if metadata_min_interval is None else metadata_min_interval
        self._rng = rng or _random.Random()
        self.backoff = retry.backoff_policy(retry_backoff_min, retry_backoff_max, self._rng)
        self._endpoint_factory = endpoint_factory or (lambda address: endpoint_for(address, reactor, connect_timeout))
        #: The bootstrap addresses as given.
        self.bootstrap = parse_bootstrap(bootstrap)
        self._bootstrap_keys = [self._key(b) for b in self.bootstrap]
        self._bootstrap_by_key = dict(zip(self._bootstrap_keys, self.bootstrap, strict=True))
        #: What the client knows of the cluster.
        self.view = ClusterView()
        #: Partition choice for messages sent without a partition.
        self.partitioner = Partitioner(self._rng)
        self._clients: dict[str, StreamlogClient] = {}
        self._given: set[str] = set()
        for address, node in (node_clients or {}).items():
            key = self._key(address)
            self._clients[key] = node
            self._given.add(key)
        self._suspect: dict[str, float] = {}  # address key -> when a request there last failed for no answer
        self._topics_in_use: set[str] = set()
        self._stale = True
        self._fetching: Deferred | None = None
        self._fetch_timer: IDelayedCall | None = None
        self._last_fetch: float | None = None
        self._asked: frozenset[str] = frozenset()  # the topics the last fetch that started asked for
        self._periodic: IDelayedCall | None = None
        self._closed = False
        self._next_candidate = 0
        self._calls: set[_Call] = set()
        #: Called (without arguments) when L{close} is first called: what was built over this client.
        self.close_hooks: list[Callable[[], object]] = []
        #: Counts the times the metadata was said to be stale; a fetch that started before
        #: the last mark does not clear it.
        self._stale_marks = 0
        self._fetch_mark = 0

    @classmethod
    def over(cls, node: StreamlogClient, **kw: Any) -> ClusterClient:
        """A cluster client whose bootstrap is the connection C{node} (which it then owns and closes);
        the connections it opens to other nodes take C{node}'s request and connect timeouts."""
        kw.setdefault("connect_timeout", node.connect_timeout)
        cluster = cls(node.address, clock=node.clock, request_timeout=node.request_timeout,
                      node_clients={node.address: node},
                      endpoint_factory=kw.pop("endpoint_factory", None) or (lambda address: address), **kw)
        node.close_hooks.append(cluster.close)
        return cluster

    @staticmethod
    def _key(address: Any) -> str:
        return address_key(address)

    # --- connections ---------------------------------------------------------------------

    def node_client(self, address: Any) -> StreamlogClient:
        """The connection to the node at C{address}, made on first use."""
        key = self._key(address)
        node = self._clients.get(key)
        if node is None:
            target = self._bootstrap_by_key.get(key, address)
            node = StreamlogClient(self._endpoint_factory(target), clock=self.clock, reactor=self.reactor,
                                   request_timeout=self.request_timeout, reconnect_min=self.reconnect_min,
                                   reconnect_max=self.reconnect_max, rng=self._rng,
                                   name=describe_address(target), fail_waiting_on_connect_failure=True,
                                   stall_timeout=self.stall_timeout, idle_dial_limit=self.idle_dial_limit,
                                   stall_recheck_max=self.stall_recheck_max,
                                   connect_timeout=connect_timeout_for(target, self.connect_timeout))
            node.on_stall = self._node_stalled
            self._clients[key] = node
        return node

    # --- stalled nodes -------------------------------------------------------------------

    def _node_stalled(self, node: StreamlogClient, silent: float, in_flight: int) -> None:
        """A node's connection has requests in flight and said nothing for C{stall_timeout}: ask
        another node where the leaders are (again at each recheck while it lasts), if requests
        bound to a partition are among those waiting."""
        key = next((k for k, c in self._clients.items() if c is node), None)
        if key is None or self._closed or key in self._stall_checks:
            return
        self._suspect[key] = self.clock.seconds()
        node_id = self.view.node_at(key)
        attempt = self._fetch_attempt
        if attempt is not None and attempt[0] == key and not attempt[1].called:
            attempt[1].cancel()  # a fetch waiting on this very node: it asks the next one now
        if not node.bound_in_flight():
            return  # coordinator and admin calls: they end at their own timeout
        self._stall_checks.add(key)
        d = self.refresh_metadata()
        d.addCallbacks(lambda _: self._stall_verdict(node, key, node_id), lambda _: None)
        d.addBoth(lambda _: self._stall_checks.discard(key))
        d.addErrback(lambda f: self._log.failure("judging a stalled connection failed", f))

    def _stall_verdict(self, node: StreamlogClient, key: str, node_id: int | None) -> None:
        """Drop the stalled connection if a partition of a request in flight there is led
        elsewhere now in a later term than the one it was sent for (or the cluster sees the node
        down); else keep waiting for its answers: a slow leader is still the leader.

        Only partition-bound requests are judged, each against the term it was sent for and the
        view just fetched: not what the node led in a view that may be minutes old for the
        partitions not in use (a preferred-leader transfer of one of those is no reason to leave
        the leader of another), and never a coordinator's or controller's call, which no other
        node could answer sooner (a dropped JoinGroup, CreateTopic or CommitOffsets would be
        failed after it was applied)."""
        if self._closed or self._clients.get(key) is not node or node.stall_timeout is None:
            return
        silent = node.silent_for
        if silent < node.stall_timeout:
            return  # it spoke meanwhile
        bound = node.bound_in_flight()
        if not bound:
            return
        why = None
        for topic, partition, term in sorted(set(bound)):
            info = self.view.topics.get(topic)
            if info is None or partition >= info.count:
                continue
            now = info.partitions[partition]
            if now.leader is not None and now.leader != node_id and now.leader_term > term:
                why = f"{topic}/{partition} is led by node {now.leader} now (term {now.leader_term})"
                break
        seen = self.view.nodes.get(node_id) if node_id is not None else None
        if why is None and seen is not None and not seen.up:
            why = "the cluster sees the node down"
        if why is None:
            return
        self.stalls_dropped += 1
        node.abort_connection(f"no answer from {node.address} for {silent:.2f}s with requests in flight, "
                              f"and {why}")

    def partition_bound(self, topic: str, partition: int) -> PartitionBound:
        """What a request for C{topic}/C{partition} sent now is bound to: the partition and the term
        of the leader the view names (see L{_stall_verdict})."""
        info = self.view.topics.get(topic)
        term = info.partitions[partition].leader_term if info is not None and 0 <= partition < info.count else 0
        return PartitionBound(topic, partition, term)

    # --- news of a node: dial it now -------------------------------------------------------------

    def _node_picture(self) -> tuple[dict[int, bool], dict[tuple[str, int], tuple[int | None, int]]]:
        """What the view says now: which nodes are up, and who leads each partition in use (and in
        which term); compared after a Metadata answer by L{_news_since}."""
        up = {node_id: node.up for node_id, node in self.view.nodes.items()}
        leaders = {(topic, p.partition): (p.leader, p.leader_term)
                   for topic in self._topics_in_use if (info := self.view.topics.get(topic)) is not None
                   for p in info.partitions}
        return up, leaders

    def _news_since(self, before: tuple[dict[int, bool], dict[tuple[str, int], tuple[int | None, int]]]
                    ) -> set[int]:
        """The nodes the view calls up now that it did not before, and the new leaders (another
        node, or a later term) of partitions in use."""
        up_before, leaders_before = before
        news = {node_id for node_id, node in self.view.nodes.items() if node.up and not up_before.get(node_id)}
        for (topic, partition), (leader, term) in self._node_picture()[1].items():
            old = leaders_before.get((topic, partition))
            # A leader forgotten after a failed attempt (None, same term) named again is no news.
            if leader is not None and old is not None and (term > old[1] or old[0] not in (None, leader)):
                news.add(leader)
        return news

    def _dial_news(self, node_ids: set[int]) -> None:
        """Dial the nodes named (their connections made already and down) without waiting out their
        backoff: the cluster says they are up, or lead now (see the class docstring)."""
        for node_id in sorted(node_ids):
            node = self.view.nodes.get(node_id)
            if node is None or not node.up:
                continue
            client = self._clients.get(self._key(node.address))
            if client is None or client.connected:
                continue
            if client.dialling:
                # An attempt that may have started while the node was dark: noted, so that should
                # it fail (at the connect timeout, if nothing answers it) the next follows soon.
                client.dial_now()
                continue
            if client.dial_now():
                self.news_dials += 1
                self._log.debug("dialling {address} now: the cluster says it is up or leads",
                                address=client.address)

    @property
    def refused_unsent(self) -> int:
        """Requests failed unsent because their node's connection could not be made (it was
        backing off after failed attempts): what news dials are there to avoid."""
        return self._refused_closed + sum(node.refused_unsent for node in self._clients.values())

    def _close_node(self, key: str) -> None:
        node = self._clients.pop(key, None)
        self._suspect.pop(key, None)
        if node is not None:
            self._refused_closed += node.refused_unsent
            self._log.info("closing the connection to {address}: the node left the cluster's metadata",
                           address=node.address)
            node.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        """Whether a connection to any node is up."""
        return any(node.connected for node in self._clients.values())

    @property
    def connections(self) -> dict[str, StreamlogClient]:
        """The open node connections, by address."""
        return dict(self._clients)

    def _node_ok(self, key: str | None) -> None:
        if key is not None:
            self._suspect.pop(key, None)

    # --- metadata --------------------------------------------------------------------------

    def _mark_stale(self) -> None:
        self._stale = True
        self._stale_marks += 1

    def learn(self, error: errors.StreamlogError, topic: str | None = None, partition: int | None = None,
              address: str | None = None) -> bool:
        """Take what a failed attempt says about the cluster; True if a hint names where to try now.

        C{NOT_LEADER} and C{NOT_CONTROLLER} hints update the cache; errors
        that say it may be stale mark it so (the next route that needs it
        fetches it, shared and rate-limited).
        """
        immediate = False
        if isinstance(error, errors.NotLeader) and topic is not None and partition is not None:
            immediate = self.view.apply_not_leader(error.details, topic, partition)
            if immediate:
                hinted = self.view.leader(topic, partition)
                if hinted is not None:
                    self._dial_news({hinted.node_id})
        elif isinstance(error, errors.NotController):
            immediate = self.view.apply_not_controller(error.details)
        if isinstance(error, (errors.ConnectionLost, errors.Timeout)) and address is not None:
            self._suspect[address] = self.clock.seconds()
        if (isinstance(error, (errors.ConnectionLost, errors.Timeout, errors.ShuttingDown, errors.LeaderNotAvailable))
                and topic is not None and partition is not None):
            # The leader we asked is gone, stopping, or knows of none: ask the cluster again.
            failed = self.view.node_at(address) if address is not None else None
            self.view.forget_leader(topic, partition, failed)
        if isinstance(error, errors.UnknownTopic) and topic is not None:
            self.view.forget_topic(topic, error)
        if retry.wants_metadata(error):
            self._mark_stale()
            if immediate:
                self._refresh_soon()  # the hint is enough to go on; the fetch confirms it meanwhile
        return immediate

    def topic_seen(self, topic: str) -> None:
        """The topic exists (a Metadata answer listed it, a CreateTopic of ours succeeded)."""
        self._unknown_topics.seen(topic)

    def in_unknown_topic_grace(self, topic: str | None) -> bool:
        """Whether an C{UNKNOWN_TOPIC} answer for C{topic} is retried now (see C{unknown_topic_grace});
        the first such answer starts the grace."""
        return self._unknown_topics.applies(topic, self.clock.seconds())

    def _refresh_soon(self) -> None:
        if self._closed:
            return
        d = self._fetch()
        d.addErrback(lambda f: None)  # the callers that need it see their own errors

    def metadata(self) -> Deferred:
        """Fires with the L{ClusterView}, fetched first if it is not known yet."""
        if self.view.known:
            return succeed(self.view)
        return self._fetch()

    def refresh_metadata(self) -> Deferred:
        """Fetch the metadata now (for the topics in use); fires with the L{ClusterView}."""
        self._mark_stale()
        return self._fetch()

    def ready(self, timeout: float | None = None) -> Deferred:
        """Fires with the L{ClusterView} once some node answered for the metadata, trying again with
        backoff until C{timeout} (default C{request_timeout})."""
        if timeout is None:
            timeout = self.request_timeout
        call = _Call(self, "Ping", {}, lambda: self.metadata().addCallback(lambda _: self._any_target()),
                     timeout, resend_ok=True)
        return call.start().addCallback(lambda _: self.view)

    def _fetch(self) -> Deferred:
        """Fetch the metadata (shared by every caller while one fetch is on, and at most one start
        per C{metadata_min_interval}); fires with the view, fails with the last node's error."""
        if self._closed:
            return fail(errors.ConnectionLost("the client is closed", sent=False))
        if self._fetching is not None:
            if self._fetch_mark >= self._stale_marks:
                return _chain(self._fetching)
            # It started before the news that made the metadata stale: fetch again after it.
            again: Deferred = Deferred()

            def after(_: Any) -> None:
                self._fetch().addCallbacks(again.callback, again.errback)

            _chain(self._fetching).addBoth(after)
            return again
        self._fetching = Deferred()
        self._fetch_mark = self._stale_marks
        result = _chain(self._fetching)
        wait = 0.0
        # The rate limit is against storms of refreshes of the same view; a topic that no fetch
        # asked for yet (a consumer's or producer's first request) is asked for at once.
        if self._last_fetch is not None and self._topics_in_use <= self._asked:
            wait = self._last_fetch + self.metadata_min_interval - self.clock.seconds()
        if wait > 0:
            self._fetch_timer = self.clock.callLater(wait, self._fetch_now)
        else:
            self._fetch_now()
        return result

    def _candidates(self) -> list[str]:
        """Where to ask for the metadata: the known nodes, taking turns at the head fetch after
        fetch (suspect ones last), then the bootstrap list.

        In turn, not the same node first every time: a node cut off from its peers still
        answers, from a view that no longer moves (no leader, its peers down), and asked first
        at every fetch it kept a producer from ever learning the new leader (seen: no
        acknowledgement for 30 s after the leader, node 1, was cut off). Nodes the last answer
        called down take their turn too: that answer may be the cut-off node's (a dead node
        costs a refused connection; a silent one is given up on by the stall detection)."""
        keys: list[str] = []
        for node in sorted(self.view.nodes.values(), key=lambda n: n.node_id):
            key = self._key(node.address)
            if key not in keys:
                keys.append(key)
        if keys:
            turn = self._next_candidate % len(keys)
            keys = keys[turn:] + keys[:turn]
        n = len(self._bootstrap_keys)
        rotated = [self._bootstrap_keys[(self._next_candidate + i) % n] for i in range(n)]
        for key in rotated:
            if key not in keys:
                keys.append(key)
        return sorted(keys, key=lambda k: k in self._suspect)  # stable: the order above within each group

    def _fetch_now(self) -> None:
        self._fetch_timer = None
        candidates = self._candidates()
        self._next_candidate += 1
        topics = sorted(self._topics_in_use)
        self._asked = frozenset(topics)
        self._try_fetch(candidates, 0, topics, None)

    def _try_fetch(self, candidates: list[str], i: int, topics: list[str],
                   last: errors.StreamlogError | None) -> None:
        if self._closed:
            self._fetched(Failure(errors.ConnectionLost("the client is closed", sent=False)))
            return
        if i >= len(candidates):
            self._fetched(Failure(last or errors.ConnectionLost("no node to ask for the metadata", sent=False)))
            return
        key = candidates[i]
        node = self.node_client(self._bootstrap_by_key.get(key, key))
        d = node.call("Metadata", {"topics": topics})
        self._fetch_attempt = (key, d)

        def answered(result: Any) -> None:
            try:
                answer = MetadataAnswer.parse(result)
            except errors.StreamlogError as e:
                self._log.warn("{address} answered Metadata with something else: {error}", address=node.address,
                               error=e)
                self._try_fetch(candidates, i + 1, topics, e)
                return
            if answer.alone:
                single("runs alone (started without --peers)")
                return
            before = self._node_picture()
            departed = self.view.apply(answer, topics, self.clock.seconds())
            for info in answer.topics:
                self.topic_seen(info.topic)
            self._after_cluster_fetch(departed)
            self._dial_news(self._news_since(before))
            self._node_ok(key)
            self._fetched(self.view)

        def single(why: str) -> None:
            if not self.view.single_node:
                self._log.info("{address} {why}: it leads every partition", address=node.address, why=why)
            self.view.use_single_node(key, self.clock.seconds())
            self._after_cluster_fetch(set())  # the other bootstrap addresses are not needed
            self._node_ok(key)
            self._fetched(self.view)

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, CancelledError) and not self._closed:
                # Given up on by _node_stalled: that node is silent, ask the next one.
                self._suspect[key] = self.clock.seconds()
                self._try_fetch(candidates, i + 1, topics, last)
                return
            if isinstance(error, errors.MethodNotFound):
                single("has no Metadata method (a streamlog node before clusters)")
                return
            if not isinstance(error, errors.StreamlogError):
                self._fetched(failure)
                return
            if isinstance(error, (errors.ConnectionLost, errors.Timeout)):
                self._suspect[key] = self.clock.seconds()
            self._try_fetch(candidates, i + 1, topics, error)

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: self._log.failure("handling a Metadata answer failed", f))

    def _after_cluster_fetch(self, departed: set[str]) -> None:
        """Close the connections of nodes that left, and of bootstrap addresses that are no node's."""
        nodes = {self._key(a) for a in self.view.addresses()}
        for address in departed:
            key = self._key(address)
            if key not in self._given and key not in nodes:
                self._close_node(key)
        for key in list(self._clients):
            if key not in nodes and key not in self._given and key in self._bootstrap_by_key:
                node = self._clients.pop(key)
                node.close()  # a bootstrap address under another name than the node's: no second connection

    def _fetched(self, result: Any) -> None:
        fetching, self._fetching = self._fetching, None
        self._last_fetch = self.clock.seconds()
        if not isinstance(result, Failure) and self._fetch_mark >= self._stale_marks:
            self._stale = False
        self._schedule_periodic()
        if fetching is not None:
            if isinstance(result, Failure):
                fetching.errback(result)
                fetching.addErrback(lambda f: None)  # read only through _chain: the copies carry it
            else:
                fetching.callback(result)

    def _schedule_periodic(self) -> None:
        if self._closed or not self.metadata_max_age:
            return
        if self._periodic is not None and self._periodic.active():
            self._periodic.cancel()
        self._periodic = self.clock.callLater(self.metadata_max_age, self._periodic_refresh)

    def _periodic_refresh(self) -> None:
        self._periodic = None
        self._mark_stale()
        d = self._fetch()
        d.addErrback(lambda f: self._log.debug("refreshing the metadata failed: {error}", error=f.value))

    def topic(self, topic: str) -> Deferred:
        """Fires with the topic's L{TopicInfo} (from the cache, else fetched); fails with
        L{errors.UnknownTopic} if the cluster does not know it."""
        self._topics_in_use.add(topic)
        return self._fresh(topic, need_leader=None)

    def _fresh(self, topic: str, need_leader: int | None) -> Deferred:
        """The topic's info, fetching the metadata first if it is not known, or stale and without a
        leader for partition C{need_leader}."""
        view = self.view
        info = view.topics.get(topic)
        if view.known and info is not None:
            if not self._stale or need_leader is None or view.leader(topic, need_leader) is not None:
                return succeed(info)
        if view.known and view.single_node:
            return self._describe(topic)
        d = self._fetch() if (self._stale or not view.known or topic not in view.topics) else succeed(view)

        def after(view: ClusterView) -> Any:
            if view.single_node:
                return self._describe(topic)
            found = view.topics.get(topic)
            if found is not None:
                return found
            error = view.missing.get(topic)
            if error is not None:
                raise error
            raise errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)

        return d.addCallback(after)

    def _describe(self, topic: str) -> Deferred:
        """A single node's topic, from its DescribeTopic (no Metadata there)."""
        key = self._key(self.view.nodes[0].address)
        d = self.node_client(self._bootstrap_by_key.get(key, key)).call("DescribeTopic", {"topic": topic})

        def described(description: dict[str, Any]) -> TopicInfo:
            info = TopicInfo.from_description(description)
            self.view.set_topic(info)
            return info

        def failed(failure: Failure) -> Failure:
            if failure.check(errors.UnknownTopic):
                self.view.forget_topic(topic, failure.value)
            return failure

        return d.addCallbacks(described, failed)

    # --- routes ------------------------------------------------------------------------------

    def _target(self, address: str) -> Target:
        key = self._key(address)
        return key, self.node_client(self._bootstrap_by_key.get(key, address))

    def leader_target(self, topic: str, partition: int) -> Deferred:
        """Fires with the L{Target} leading C{topic}/C{partition} (fetching metadata as needed);
        fails with L{errors.LeaderNotAvailable} while none is known, L{errors.UnknownTopic} or
        L{errors.UnknownPartition}."""
        self._topics_in_use.add(topic)

        def pick(info: TopicInfo) -> Target:
            info.partition(partition)  # UnknownPartition
            node = self.view.leader(topic, partition)
            if node is None:
                self._mark_stale()
                raise errors.LeaderNotAvailable(f"no leader known for {topic}/{partition} yet",
                                                topic=topic, partition=partition, sent=False)
            return self._target(node.address)

        if self.view.known:
            return self._fresh(topic, need_leader=partition).addCallback(pick)
        return self.metadata().addCallback(lambda _: self._fresh(topic, need_leader=partition)).addCallback(pick)

    def _any_target(self) -> Target:
        """A node for requests any node answers: a connected one if there is one."""
        addresses = self.view.addresses() or [self._bootstrap_keys[0]]
        keys = [self._key(a) for a in addresses]
        fine = [k for k in keys if k not in self._suspect] or keys
        for key in fine:
            node = self._clients.get(key)
            if node is not None and node.connected:
                return key, node
        return self._target(fine[0])

    def any_target(self) -> Deferred:
        return self.metadata().addCallback(lambda _: self._any_target())

    def controller_target(self) -> Deferred:
        def pick(view: ClusterView) -> Target:
            node = view.controller_node()
            return self._target(node.address) if node is not None else self._any_target()

        return self._fresh_controller().addCallback(pick)

    def _fresh_controller(self) -> Deferred:
        if self.view.known and (not self._stale or self.view.controller is not None):
            return succeed(self.view)
        return self._fetch()

    # --- calls -----------------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None,
             expect_answer: bool = True) -> Deferred:
        """Any request, to any node; retried only after errors that guarantee nothing was done."""
        return self._run(method, params or {}, self.any_target, timeout, resend_ok=False,
                         expect_answer=expect_answer)

    def _run(self, method: str, params: Any, route: Callable[[], Any], timeout: float | None, resend_ok: bool,
             expect_answer: bool = True, topic: str | None = None, partition: int | None = None,
             attempt_timeout: float | None = None,
             on_retry: Callable[[errors.StreamlogError, float], object] | None = None,
             final: tuple[type[errors.StreamlogError], ...] = ()) -> Deferred:
        if self._closed:
            return fail(errors.ConnectionLost("the client is closed", method=method, sent=False))
        if timeout is None:
            timeout = self.request_timeout
        return _Call(self, method, params, route, timeout, resend_ok, expect_answer, topic, partition,
                     attempt_timeout, on_retry, final).start()

    def _partition_call(self, method: str, params: dict[str, Any], topic: str, partition: int,
                        timeout: float | None, resend_ok: bool, expect_answer: bool = True,
                        attempt_timeout: float | None = None,
                        on_retry: Callable[[errors.StreamlogError, float], object] | None = None) -> Deferred:
        return self._run(method, params, lambda: self.leader_target(topic, partition), timeout, resend_ok,
                         expect_answer, topic, partition, attempt_timeout, on_retry)

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str = "all", timeout: float | None = None) -> Deferred:
        """C{Send} to the partition's leader: fires with C{{topic, partition, offset, timestamp,
        durability, ...}} (None for acks="none").  The partition is chosen here (murmur2 of the key,
        else the sticky partition, which each unkeyed send moves on by one) unless the server is a
        single node, which chooses itself."""
        expect = acks != "none"

        def routed(info: TopicInfo, timeout: float | None) -> Deferred:
            chosen = self.partitioner.choose(topic, info.count, key, partition)
            if key is None and partition is None:
                self.partitioner.batch_closed(topic, info.count, chosen)
            params = requests.send(topic, value, key, chosen, headers, acks)
            return self._partition_call("Send", params, topic, chosen, timeout, False, expect)

        def go(info: TopicInfo | None) -> Deferred:
            if info is None:  # a single node (or an unknown topic it may create): it chooses
                params = requests.send(topic, value, key, partition, headers, acks)
                return self._server_routed("Send", params, topic, timeout, expect, routed)
            return routed(info, timeout)

        return self._routing_info(topic).addCallback(go)

    def _server_routed(self, method: str, params: dict[str, Any], topic: str, timeout: float | None,
                       expect: bool, routed: Callable[[TopicInfo, float | None], Deferred]) -> Deferred:
        """C{method} to any node, which places the messages: on a single node, or for a topic no
        node knew (which the node may auto-create).  In a cluster, the node that created the topic
        may not lead the partition it chose: its C{NOT_LEADER} (nothing was appended) sends the
        call to the topic's metadata and then to the partition's leader (C{routed(info,
        remaining)}), instead of asking that node again until the timeout.  A C{NOT_LEADER} with
        C{maybe_appended} (the node appended it as the leader, then lost the leadership before it
        committed: the next leader may still commit it) is the caller's, as every write's is
        (L{retry.may_have_landed}): sending it again could store it twice."""
        if self.view.single_node:
            return self._run(method, params, self.any_target, timeout, False, expect, topic)
        if timeout is None:
            timeout = self.request_timeout
        deadline = None if timeout is None else self.clock.seconds() + timeout

        def refused(failure: Failure) -> Any:
            failure.trap(errors.NotLeader)
            if retry.may_have_landed(failure.value):
                return failure
            remaining = None if deadline is None else deadline - self.clock.seconds()
            if self._closed or (remaining is not None and remaining <= 0):
                return failure

            def left() -> float | None:
                return None if deadline is None else deadline - self.clock.seconds()

            def unknown(f: Failure) -> Any:
                # The node that answered the fetch does not know the topic yet: as before.
                f.trap(errors.UnknownTopic)
                return self._run(method, params, self.any_target, left(), False, expect, topic)

            # The lookup counts against the deadline too, and so does the call after it.
            looked_up = self._topic_by(topic, deadline, method)
            return looked_up.addCallbacks(lambda info: routed(info, left()), unknown)

        d = self._run(method, params, self.any_target, timeout, False, expect, topic, final=(errors.NotLeader,))
        return d.addErrback(refused)

    def _routing_info(self, topic: str) -> Deferred:
        """The topic's info when the client chooses partitions; None when the server does (a single
        node, or a topic no node knows yet, which a Send may auto-create)."""
        def known(view: ClusterView) -> Any:
            if view.single_node:
                return None
            return self.topic(topic).addErrback(lambda f: f.trap(errors.UnknownTopic) and None)

        self._topics_in_use.add(topic)  # so that the first fetch asks for it too
        return self.metadata().addCallback(known)

    def send_batch(self, topic: str, messages: list[dict[str, Any]] | orjson.Fragment, acks: str = "all",
                   timeout: float | None = None) -> Deferred:
        """C{SendBatch}: C{messages} are C{{value, key?, partition?, headers?}} objects.

        Fires with C{{topic, timestamp, durability, partitions: [{partition,
        base_offset, count}], ...}} (None for acks="none").  In a cluster the
        messages are split by partition (chosen here: explicit, murmur2 of the
        key, else one partition for all unkeyed ones) and each part goes to its
        leader as its own request: each part is atomic, the whole is not.  If a
        part fails, the call fails with that part's error, and its details'
        C{appended} lists the parts that were appended (C{{partition,
        base_offset, count}}).  An C{orjson.Fragment} (messages encoded
        already) is sent as it is, to any node.
        """
        expect = acks != "none"

        def go(info: TopicInfo | None) -> Deferred:
            if isinstance(messages, orjson.Fragment):
                params = requests.send_batch(topic, messages, acks)
                return self._run("SendBatch", params, self.any_target, timeout, False, expect, topic)
            if info is None:
                params = requests.send_batch(topic, messages, acks)
                left = self.request_timeout if timeout is None else timeout
                deadline = None if left is None else self.clock.seconds() + left
                d = self._server_routed("SendBatch", params, topic, timeout, expect,
                                        lambda info, left: self._send_parts(topic, info, messages, acks, left))
                return d.addCallback(self._resend_refused_parts, topic, messages, acks, deadline)
            return self._send_parts(topic, info, messages, acks, timeout)

        return self._routing_info(topic).addCallback(go)

    def _send_parts(self, topic: str, info: TopicInfo, messages: list[dict[str, Any]], acks: str,
                    timeout: float | None) -> Deferred:
        parts: dict[int, list[dict[str, Any]]] = {}
        sticky: int | None = None
        for m in messages:
            key, explicit = m.get("key"), m.get("partition")
            if key is None and explicit is None:
                if sticky is None:
                    sticky = self.partitioner.sticky(topic, info.count)
                chosen = sticky
            else:
                chosen = self.partitioner.choose(topic, info.count, key, explicit)
            parts.setdefault(chosen, []).append({**m, "partition": chosen})
        if sticky is not None:
            self.partitioner.batch_closed(topic, info.count, sticky)
        expect = acks != "none"
        order = list(parts)
        calls = [self._partition_call("SendBatch", requests.send_batch(topic, parts[p], acks), topic, p, timeout,
                                      False, expect) for p in order]
        return DeferredList(calls, consumeErrors=True).addCallback(self._merge_parts, topic, expect)

    def _resend_refused_parts(self, result: Any, topic: str, messages: list[dict[str, Any]], acks: str,
                              deadline: float | None) -> Any:
        """A node that placed a new topic's batch took only some parts (docs/protocol.md: a
        SendBatch is answered per partition): the parts it answered with C{NOT_LEADER} (nothing
        appended) or C{LEADER_NOT_AVAILABLE} go to their leaders within what is left of the
        timeout, as the parts of a known topic's batch do, instead of being handed back as the
        answer.  A part that may have been appended (C{maybe_appended}) or was refused otherwise
        stays an error entry: resending it could append it twice.  Should the resend (or the
        lookup before it) fail, the call's error carries C{maybe_appended} if such a part may
        have been (L{retry.given_up}): never "nothing sent" for what may be stored."""
        if not isinstance(result, dict):
            return result
        entries: list[dict[str, Any]] = result.get("partitions") or []
        refused = {e["partition"]: errors.from_wire(e["error"]) for e in entries if _resendable(e)}
        remaining = None if deadline is None else deadline - self.clock.seconds()
        if not refused or self._closed or (remaining is not None and remaining <= 0):
            return result
        for partition, error in refused.items():
            self.learn(error, topic, partition)
        taken = [e for e in entries if e["partition"] not in refused]
        maybe_landed = any(retry.may_have_landed(errors.from_wire(e["error"])) for e in taken if "error" in e)

        def merged(answer: Any) -> Any:
            if isinstance(answer, Failure):
                error = answer.value
                if isinstance(error, errors.StreamlogError):
                    error.details["appended"] = (
                        [e for e in taken if "error" not in e] + error.details.get("appended", []))
                    if maybe_landed:
                        return Failure(retry.given_up(error, True))
                return answer
            again = {e["partition"]: e for e in answer["partitions"]}
            result["partitions"] = [again.get(e["partition"], e) for e in entries]
            for field in ("replicas", "replication_factor"):
                if field in answer and field in result:
                    result[field] = min(result[field], answer[field])
            return result

        def routed(info: TopicInfo) -> Any:
            parts = _messages_of(refused, entries, messages, info.count)
            if parts is None:  # the node placed them otherwise than this client can tell
                return result
            left = None if deadline is None else deadline - self.clock.seconds()
            return self._send_parts(topic, info, parts, acks, left).addBoth(merged)

        # A lookup that fails or outlasts the deadline fails the call as a resent part would,
        # with the taken parts listed as appended.
        return self._topic_by(topic, deadline, "SendBatch").addCallbacks(routed, merged)

    def _topic_by(self, topic: str, deadline: float | None, method: str) -> Deferred:
        """L{topic}, but failing with the L{errors.Timeout} a call's own route gives (nothing
        sent) once C{deadline} passes first: a metadata fetch waits for each node it asks for up to
        the request timeout, which must not hold a call past its own."""
        d = self.topic(topic)
        remaining = None if deadline is None else deadline - self.clock.seconds()
        if remaining is None or d.called:
            return d

        def overdue(_: Any, timeout: float) -> Failure:
            return Failure(errors.Timeout(f"no time left for {method}", method=method, sent=False))

        # Cancelling drops only this caller's copy: a shared fetch goes on for the others.
        return d.addTimeout(max(remaining, 0.0), self.clock, onTimeoutCancel=overdue)

    @staticmethod
    def _merge_parts(outcomes: list[tuple[bool, Any]], topic: str, expect: bool) -> Any:
        if not expect:
            failures = [r for ok, r in outcomes if not ok]
            if failures:
                return failures[0]
            return None
        appended: list[dict[str, Any]] = []
        failure: Failure | None = None
        merged: dict[str, Any] = {"topic": topic}
        for ok, result in outcomes:
            if not ok:
                failure = failure or result
                continue
            requests.merge_batch_answer(merged, appended, result)
        if failure is not None:
            error = failure.value
            if isinstance(error, errors.StreamlogError):
                error.details["appended"] = appended
            return failure
        merged["partitions"] = appended
        return merged

    def poll(self, topic: str, partition: int, offset: int, max_messages: int | None = None,
             max_bytes: int | None = None, max_wait_ms: int = 0, timeout: float | None = None,
             on_retry: Callable[[errors.StreamlogError, float], object] | None = None) -> Deferred:
        """C{Poll} at the partition's leader; fires with C{{messages, next_offset, high_watermark,
        log_start_offset}}.  Retried where leadership moved (and after a lost connection, a
        timeout or C{TOO_MANY_WAITING_POLLS}) within C{timeout} (default the request timeout
        plus C{max_wait_ms}); C{on_retry(error, delay)} is told of each retry."""
        params = requests.poll(topic, partition, offset, max_messages, max_bytes, max_wait_ms)
        attempt = None
        if self.request_timeout is not None:
            attempt = self.request_timeout + max_wait_ms / 1000.0
            if timeout is None:
                timeout = attempt
        return self._partition_call("Poll", params, topic, partition, timeout, True, attempt_timeout=attempt,
                                    on_retry=on_retry)

    def list_offsets(self, topic: str, partition: int = 0, at: str | int = "latest",
                     timeout: float | None = None,
                     on_retry: Callable[[errors.StreamlogError, float], object] | None = None) -> Deferred:
        """Fires with the offset (an int) for C{at}: "earliest", "latest" or a timestamp in ms (asked of the leader)."""
        params = {"topic": topic, "partition": partition, "at": at}
        return self._partition_call("ListOffsets", params, topic, partition, timeout, True,
                                    on_retry=on_retry).addCallback(lambda r: r["offset"])

    def create_topic(self, topic: str, partitions: int = 1, config: dict[str, Any] | None = None,
                     timeout: float | None = None) -> Deferred:
        """C{CreateTopic} at the controller; fires with the topic's description."""
        d = self._run("CreateTopic", requests.create_topic(topic, partitions, config), self.controller_target,
                      timeout, False)
        return d.addCallback(self._admin_done, topic, True)

    def auto_create_topic(self, topic: str, timeout: float | None = None) -> Deferred:
        """C{CreateTopic {topic, auto_create: true}} at any node: the topic as a Send would auto-create
        it there, or as it exists; fires with its description (C{created}: whether this made it).
        Safe to resend (it only ever creates once)."""
        d = self._run("CreateTopic", requests.auto_create_topic(topic), self.any_target, timeout, True)
        return d.addCallback(self._admin_done, topic, True)  # it exists now, made by this or not

    def delete_topic(self, topic: str, timeout: float | None = None) -> Deferred:
        d = self._run("DeleteTopic", {"topic": topic}, self.controller_target, timeout, False)
        return d.addCallback(self._admin_done, topic, False)

    def _admin_done(self, result: Any, topic: str, created: bool) -> Any:
        self.view.forget_topic(topic)  # asked again when next used
        if created:
            self.topic_seen(topic)  # a node lagging behind the controller may not know it yet
        else:
            self._unknown_topics.forget(topic)
        return result

    def list_topics(self, timeout: float | None = None) -> Deferred:
        """Fires with C{[{topic, partitions}, ...]}."""
        return self._run("ListTopics", {}, self.any_target, timeout, True).addCallback(lambda r: r["topics"])

    def describe_topic(self, topic: str, timeout: float | None = None) -> Deferred:
        return self._run("DescribeTopic", {"topic": topic}, self.any_target, timeout, True)

    def ping(self, timeout: float | None = None) -> Deferred:
        return self._run("Ping", {}, self.any_target, timeout, True)

    def when_connected(self, fail_after_failures: int | None = None) -> Deferred:
        """Fires with the L{ClusterView} once a node answered (see L{ready})."""
        return self.ready()

    def close(self) -> Deferred:
        """Close every connection; calls still running fail with L{errors.ConnectionLost}."""
        if self._closed:
            return succeed(None)
        self._closed = True
        hooks, self.close_hooks = self.close_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                self._log.failure("a close hook failed")
        for timer in (self._periodic, self._fetch_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._periodic = self._fetch_timer = None
        if self._fetching is not None:
            self._fetched(Failure(errors.ConnectionLost("the client was closed", sent=False)))
        for call in list(self._calls):
            call.abort(errors.ConnectionLost(f"the client was closed before {call.method} was answered",
                                             method=call.method))
        closing = [node.close() for node in self._clients.values()]
        self._clients.clear()
        return DeferredList(closing).addCallback(lambda _: None)


def _resendable(entry: dict[str, Any]) -> bool:
    """Whether a SendBatch error entry is a part surely not appended that its leader may take."""
    error = entry.get("error")
    if error is None or error.get("maybe_appended"):
        return False
    return error.get("code") in (errors.NotLeader.code, errors.LeaderNotAvailable.code)


def _messages_of(refused: Mapping[int, Any], entries: list[dict[str, Any]], messages: list[dict[str, Any]],
                 count: int) -> list[dict[str, Any]] | None:
    """The messages (in request order, each naming its partition) that a node placed on the
    C{refused} partitions of a SendBatch it answered with C{entries}.  Explicit and keyed
    messages are placed by the server's rule; all unkeyed ones went to one partition, the
    one whose entry counts more messages than its explicit and keyed ones, or, if none does, one
    answered with an error (an error entry has no count).  None when the counts do not tell (a
    topic of another partition count than C{count}) or the unkeyed ones may be on a part not
    C{refused} (one that may hold them already)."""
    placed: list[int | None] = []
    counts: dict[int, int] = {}
    for m in messages:
        explicit, key = m.get("partition"), m.get("key")
        p = explicit if explicit is not None else None if key is None else partition_for_key(key, count)
        placed.append(p)
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    unkeyed = placed.count(None)
    # An error entry carries no count (docs/protocol.md): only taken parts say how many they hold.
    surplus = {e["partition"]: e["count"] - counts.get(e["partition"], 0) for e in entries if "error" not in e}
    sticky = [p for p, n in surplus.items() if n != 0]
    home: int | None = None
    if sticky:
        if len(sticky) != 1 or surplus[sticky[0]] != unkeyed:
            return None
        home = sticky[0]
    elif unkeyed:
        # The unkeyed ones went to one part answered with an error: the one no explicit or keyed
        # message names if there is one (a part is answered only if a message went there), else
        # any erring part.  Resent only if every part they may be on surely holds none of them;
        # then to the first such part (an unkeyed message has no partition to keep).
        erring = [e["partition"] for e in entries if "error" in e]
        unnamed = [p for p in erring if p not in counts]
        candidates = unnamed if len(unnamed) == 1 else erring
        if not candidates or any(p not in refused for p in candidates):
            return None
        home = candidates[0]
    where = [home if p is None else p for p in placed]
    return [{**m, "partition": p} for m, p in zip(messages, where, strict=True) if p in refused]


def as_cluster_client(client: Any) -> Any:
    """C{client} if it routes already, else the L{ClusterClient} over the one connection it is
    (one per connection, shared by everything built over it)."""
    if isinstance(client, StreamlogClient):
        if client.cluster is None or client.cluster.closed:
            client.cluster = ClusterClient.over(client)
        return client.cluster
    return client


__all__ = ["DEFAULT_IDLE_DIAL_LIMIT", "DEFAULT_STALL_TIMEOUT", "DEFAULT_UNKNOWN_TOPIC_GRACE", "ClusterClient", "Target",
           "as_cluster_client"]

