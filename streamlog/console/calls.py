"""The console's RPCs: the node's own handlers, in process, and one hop to a leader.

The console asks the node it is served by, as a client would but without a
socket: C{broker.handlers[method](params)}.  The answers that are cluster-wide
already (Metadata, ListTopics, DescribeTopic, ListGroups, which asks the other
nodes over the peer links) come from there.  A Poll or ListOffsets of a
partition another node leads is answered C{NOT_LEADER}, a group request at a
node that is not the group's coordinator C{NOT_COORDINATOR}, each with the
address of the node that can answer: the call is then sent once to that
address, over a client connection kept per address.  A second hint, or an
error without an address, is the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors, wire

#: Where each error that names another node says it is.
_HINTS = {"NOT_LEADER": "leader_address", "NOT_COORDINATOR": "coordinator_address",
          "NOT_CONTROLLER": "controller_address"}


class NodeCalls:
    """RPCs answered by the node's own handlers, following one hint to the node that can answer.

    @param handlers: method -> handler, as C{Broker.handlers} (a handler returns a result,
        a L{wire.RawResult}, a Deferred of either, or raises a L{errors.StreamlogError}).
    @param connect: address (C{HOST:PORT}) -> a client with C{call(method, params)}, for hints.
    """

    _log = Logger()

    def __init__(self, handlers: Mapping[str, Callable[[dict[str, Any]], Any]],
                 connect: Callable[[str], Any]) -> None:
        self._handlers = handlers
        self._connect = connect
        self._clients: dict[str, Any] = {}

    def call(self, method: str, params: dict[str, Any]) -> Deferred:
        """The answer of C{method}, decoded; fails with the L{errors.StreamlogError} it answered."""
        d = self.local(method, params)
        d.addErrback(self._follow, method, params)
        return d

    def local(self, method: str, params: dict[str, Any]) -> Deferred:
        """C{method} at this node only."""
        handler = self._handlers.get(method)
        if handler is None:
            raise errors.MethodNotFound(f"unknown method {method!r}", method=method)
        d = maybeDeferred(handler, dict(params))
        d.addCallbacks(_decoded, _as_streamlog_error)
        return d

    def _follow(self, failure: Failure, method: str, params: dict[str, Any]) -> Any:
        error = failure.value
        field = _HINTS.get(getattr(error, "code", ""))
        address = error.details.get(field) if field is not None else None
        if not isinstance(address, str) or not address:
            return failure
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._connect(address)
        d: Deferred = client.call(method, params)
        return d.addErrback(_as_streamlog_error)

    def close(self) -> Deferred:
        """Close the hint connections."""
        clients, self._clients = list(self._clients.values()), {}
        return gatherResults([maybeDeferred(c.close) for c in clients], consumeErrors=True)


def _decoded(result: Any) -> Any:
    """A handler's result as JSON values (a Poll's is pre-encoded bytes)."""
    if type(result) is wire.RawResult:
        return orjson.loads(b"".join(result.chunks))
    return result


def _as_streamlog_error(failure: Failure) -> Failure:
    """A protocol error stays; anything else is C{INTERNAL} (logged with its traceback)."""
    if isinstance(failure.value, errors.StreamlogError):
        return failure
    NodeCalls._log.failure("console call failed", failure)
    return Failure(errors.Internal("internal error (logged by the node)"))
