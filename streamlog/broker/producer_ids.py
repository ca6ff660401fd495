"""C{InitProducerId}: producer ids and epochs for idempotent producers, unique cluster-wide (issue 10).

Two kinds of producer:

  - without a name: a fresh id at epoch 0.  The node hands ids out of a
    block it took from the registry (L{BLOCK} at a time, so one metadata
    commit serves many producers); an id is never handed out twice, even
    across restarts (the rest of a block is skipped).  Such a producer asks
    for its next epoch by naming its id and epoch; nothing is recorded for
    that, because only the producer itself holds the id (each partition
    fences older epochs by what it stored).
  - with a C{producer_name}: the registry maps the name to (id, epoch);
    a new instance gets the next epoch, which fences the older ones
    (L{streamlog.idempotence.registry}).

The registry is the cluster metadata in a cluster (the C{AllocateProducerIds}
and C{InitProducer} commands, committed by the metadata group) and, on a node
alone (which runs no metadata group), a small file in the data directory
(C{producer-ids.json}, replaced atomically and fsynced before an answer),
driven by the same pure rules.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.idempotence import registry
from streamlog.storage.checkpoint import write_atomically

#: Producer ids a node takes from the registry at a time.
BLOCK = 1000

#: The registry file of a node alone, in its data directory.
REGISTRY_FILE = "producer-ids.json"

#: C{request_token}s of producers without a name a node remembers (the newest), with the answer each got.
TOKENS_REMEMBERED = 10_000


class LocalRegistry:
    """The registry of a node alone: C{next_producer_id} and the named producers, in C{path} (None: memory)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.next_id = 0
        self.producers: dict[str, registry.Identity] = {}
        #: name -> the request_tokens of its last few InitProducerId and what each was given
        self.tokens: dict[str, registry.Tokens] = {}
        if path is not None and os.path.exists(path):
            with open(path, "rb") as f:
                state = json.load(f)
            self.next_id = int(state["next_producer_id"])
            self.producers = {name: (int(pid), int(epoch)) for name, (pid, epoch) in state["producers"].items()}
            self.tokens = {name: registry.tokens_from_json(value, self.producers[name])
                           for name, value in state.get("tokens", {}).items()}

    def _save(self, next_id: int, producers: dict[str, registry.Identity], tokens: dict[str, registry.Tokens]) -> None:
        """Make this state durable, then hold it.  Nothing changes here if the write or its sync
        fails: a resend (the same C{request_token}) must not be answered from memory with what
        never reached the disk (a failed sync has stopped the node by then: fail-stop)."""
        if self.path is not None:
            write_atomically(self.path, json.dumps({
                "next_producer_id": next_id,
                "producers": {n: list(i) for n, i in sorted(producers.items())},
                "tokens": {n: registry.tokens_to_json(t, producers[n]) for n, t in sorted(tokens.items())},
            }).encode())
        self.next_id, self.producers, self.tokens = next_id, producers, tokens

    def allocate(self, count: int) -> Deferred:
        """Fires with the first of C{count} new ids."""
        if self.next_id + count - 1 > registry.MAX_PRODUCER_ID:
            return fail(errors.ProducerIdsExhausted("every producer id has been handed out"))
        first = self.next_id
        self._save(first + count, self.producers, self.tokens)
        return succeed(first)

    def register(self, name: str, current: registry.Identity | None, token: str | None = None) -> Deferred:
        """Fires with the (id, epoch) for C{name} (see L{registry.register_once})."""
        try:
            producers, tokens, next_id, identity = registry.register_once(
                self.producers, self.tokens, self.next_id, name, current, token)
        except registry.Fenced as e:
            return fail(errors.ProducerFenced(str(e), producer_name=name))
        except registry.Exhausted as e:
            return fail(errors.ProducerIdsExhausted(str(e)))
        if (producers, tokens, next_id) != (self.producers, self.tokens, self.next_id):
            self._save(next_id, producers, tokens)
        return succeed(identity)


class MetadataRegistry:
    """The registry of a cluster: commands committed by the metadata group (through the controller)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def _commit(self, command: Any, answer: Callable[[dict[str, Any]], Any]) -> Deferred:
        from streamlog.cluster import metadata as md

        def applied(result: Any) -> Any:
            if result is None:
                raise errors.Internal("the metadata entry had no result")
            if isinstance(result, dict):  # forwarded: the controller's answer, already checked
                return answer(result)
            if not result.ok:
                raise result.exception()
            return answer(dict(result.value))

        d: Deferred = self.node.propose(md.encode_command(command))
        return d.addCallback(applied)

    def allocate(self, count: int) -> Deferred:
        from streamlog.cluster import metadata as md

        return self._commit(md.AllocateProducerIds(count), lambda v: int(v["first"]))

    def register(self, name: str, current: registry.Identity | None, token: str | None = None) -> Deferred:
        from streamlog.cluster import metadata as md

        command = md.InitProducer(name, *(current if current is not None else (None, None)), request_token=token)
        return self._commit(command, lambda v: (int(v["producer_id"]), int(v["epoch"])))


class ProducerIds:
    """C{InitProducerId} at one node, over its registry (L{LocalRegistry} or L{MetadataRegistry})."""

    def __init__(self, registry_: Any, block: int = BLOCK) -> None:
        self.registry = registry_
        self.block = block
        self._next = 0
        self._end = 0  # ids [_next, _end) are this node's to hand out
        self._refill: Deferred | None = None
        self._waiting: list[Deferred] = []
        #: Producers without a name: (request_token, current) -> the identity answered, or the
        #: Deferreds of resends waiting for the first answer; the newest L{TOKENS_REMEMBERED}.
        self._tokens: OrderedDict[tuple[str, registry.Identity | None], Any] = OrderedDict()

    def handle(self, params: dict[str, Any], limits: wire.Limits = wire.DEFAULT_LIMITS) -> Deferred:
        """The C{InitProducerId} handler: fires with C{{"producer_id", "epoch"}}."""
        p = wire.parse_init_producer_id(params, limits)
        current = None if p.producer_id is None or p.epoch is None else (p.producer_id, p.epoch)
        if p.producer_name is not None:
            d = self.registry.register(p.producer_name, current, p.request_token)
        elif p.request_token is not None:
            d = self._once((p.request_token, current))
        else:
            d = self._unnamed(current)
        return d.addCallback(lambda identity: {"producer_id": identity[0], "epoch": identity[1]})

    def _unnamed(self, current: registry.Identity | None) -> Deferred:
        if current is not None and current[1] < registry.MAX_EPOCH:
            return succeed((current[0], current[1] + 1))
        return self.new_id().addCallback(lambda pid: (pid, 0))

    def _once(self, key: tuple[str, registry.Identity | None]) -> Deferred:
        """An unnamed producer's request with a token: a resend at this node gets the first answer
        (a resend at another node gets another id: harmless, the producer uses the one it hears)."""
        known = self._tokens.get(key)
        if isinstance(known, tuple):
            self._tokens.move_to_end(key)
            return succeed(known)
        if isinstance(known, list):  # the first is still being answered
            waiting: Deferred = Deferred()
            known.append(waiting)
            return waiting
        self._tokens[key] = waiters = []
        while len(self._tokens) > TOKENS_REMEMBERED:
            self._tokens.popitem(last=False)

        def answered(result: Any) -> Any:
            if isinstance(result, Failure):
                if self._tokens.get(key) is waiters:
                    del self._tokens[key]  # nothing was handed out: a resend asks afresh
            elif self._tokens.get(key) is waiters:
                self._tokens[key] = result
            for d in waiters:
                d.callback(result) if not isinstance(result, Failure) else d.errback(result)
            return result

        return self._unnamed(key[1]).addBoth(answered)

    def new_id(self) -> Deferred:
        """Fires with an id nobody else was given, from this node's block (refilled when empty)."""
        if self._next < self._end:
            pid = self._next
            self._next += 1
            return succeed(pid)
        d: Deferred = Deferred()
        self._waiting.append(d)
        if self._refill is None:
            self._refill = self.registry.allocate(self.block)
            self._refill.addBoth(self._refilled)
        return d

    def _refilled(self, result: Any) -> None:
        self._refill = None
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            for d in waiting:
                d.errback(result)
            return
        self._next, self._end = int(result), int(result) + self.block
        for d in waiting:
            self.new_id().chainDeferred(d)
