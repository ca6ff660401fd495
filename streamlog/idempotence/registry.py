"""Who a named producer is: the name -> (producer id, epoch) rules behind C{InitProducerId} (issue 10).

Pure: the metadata state machine (L{streamlog.cluster.metadata}, the
C{InitProducer} command, replicated by the metadata group) and the
registry of a node alone (L{streamlog.broker.producer_ids}) both apply
L{register}, so a name means the same thing on one node and on many.

A producer started under a C{producer_name} gets the name's id with the
next epoch: every older instance of that name is fenced, since each
partition refuses a batch whose epoch is older than the newest it stored
(C{PRODUCER_FENCED}).  An instance asking for its own next epoch (after
C{UNKNOWN_PRODUCER_ID}, or a batch that failed for good) names its current
id and epoch; if the registry already moved past them, it is the older
instance and is fenced here.  An epoch past L{MAX_EPOCH} moves the name to
a new id at epoch 0.  Producers without a name are not registered: their
ids come from blocks (C{AllocateProducerIds}) and only the partitions know
their epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamlog.idempotence.rules import MAX_EPOCH, MAX_PRODUCER_ID

#: (producer id, epoch)
Identity = tuple[int, int]
#: A name's recent C{InitProducerId} request tokens and what each was given, newest first.
Tokens = tuple[tuple[str, Identity], ...]

#: Request tokens remembered per name: a resend of any of the last few registrations of a name
#: is recognised (the newest: answered again; an older one: fenced, it is an older instance).
TOKENS_PER_NAME = 4


class Fenced(Exception):
    """The asking instance is older than the one the registry holds for its name."""


class Exhausted(Exception):
    """No producer id is left (2^63 were handed out)."""


def new_id(next_id: int) -> tuple[int, Identity]:
    """The next id at epoch 0: C{(next id after it, (id, 0))}."""
    if next_id > MAX_PRODUCER_ID:
        raise Exhausted("every producer id has been handed out")
    return next_id + 1, (next_id, 0)


def next_epoch(identity: Identity, next_id: int) -> tuple[int, Identity]:
    """The identity after C{identity}: the same id one epoch on, or a new id once the epoch is at its maximum."""
    producer_id, epoch = identity
    if epoch < MAX_EPOCH:
        return next_id, (producer_id, epoch + 1)
    return new_id(next_id)


def register(producers: Mapping[str, Identity], next_id: int, name: str,
             current: Identity | None = None) -> tuple[dict[str, Identity], int, Identity]:
    """C{InitProducerId} for C{name}: C{(new mapping, new next id, the identity to hand out)}.

    C{current}: the identity the asking instance holds (it wants its next
    epoch), or None (a new instance).  Raises L{Fenced} if C{current} is
    not what the registry holds for the name (a newer instance took it),
    L{Exhausted} if a new id is needed and none is left.
    """
    return _register(producers, next_id, name, current)


def register_once(producers: Mapping[str, Identity], tokens: Mapping[str, Tokens], next_id: int, name: str,
                  current: Identity | None = None, token: str | None = None,
                  ) -> tuple[dict[str, Identity], dict[str, Tokens], int, Identity]:
    """L{register}, recognising a resend: C{(mapping, tokens, next id, identity)}.

    C{token}: the C{request_token} the client chose for this request (or
    None).  The registry keeps each name's last L{TOKENS_PER_NAME} tokens,
    with the identity each was given.  The same name and token again (a
    resend after the answer was lost) changes nothing: if what it was
    given is still what the name holds, it is answered with that identity
    (without it the resend would bump the epoch again, and one naming
    C{current} would be told that this very instance is fenced); if the
    name moved on since (a newer instance registered), the resend is from
    an older instance and raises L{Fenced}: registering it afresh would
    fence the newer one instead (review of issue 10, finding 3).  A token
    older than the last few is not recognised and registers afresh.
    """
    held = producers.get(name)
    recent = tokens.get(name, ())
    if token is not None and held is not None:
        for known, given in recent:
            if known != token:
                continue
            if given == held:
                return dict(producers), dict(tokens), next_id, held
            raise Fenced(f"producer {name!r} is now id {held[0]} epoch {held[1]}; this request (token "
                         f"{token[:80]!r}) was answered id {given[0]} epoch {given[1]}: a newer instance took the name")
    mapping, next_id, identity = _register(producers, next_id, name, current)
    kept = dict(tokens)
    if token is not None:  # (without one, the older tokens still say what they were given)
        kept[name] = ((token, identity),) + recent[: TOKENS_PER_NAME - 1]
    return mapping, kept, next_id, identity


def tokens_to_json(recent: Tokens, held: Identity) -> str | list[list[Any]]:
    """A name's tokens as stored: the one token that gave C{held} as its bare string (the form
    written before several were kept), else C{[[token, id, epoch], ...]}, newest first."""
    if len(recent) == 1 and recent[0][1] == held:
        return recent[0][0]
    return [[t, pid, epoch] for t, (pid, epoch) in recent]


def tokens_from_json(value: Any, held: Identity) -> Tokens:
    """L{tokens_to_json} read back; raises ValueError if C{value} is neither form."""
    if type(value) is str:
        return ((value, held),)
    if not isinstance(value, list) or not 1 <= len(value) <= TOKENS_PER_NAME:
        raise ValueError(f"request tokens must be a string or 1-{TOKENS_PER_NAME} [token, id, epoch]")
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not str
                or type(item[1]) is not int or type(item[2]) is not int):
            raise ValueError("a request token must be [token, producer id, epoch]")
        out.append((item[0], (item[1], item[2])))
    return tuple(out)


def _register(producers: Mapping[str, Identity], next_id: int, name: str,
              current: Identity | None) -> tuple[dict[str, Identity], int, Identity]:
    held = producers.get(name)
    if current is not None and held is not None and current != held:
        raise Fenced(f"producer {name!r} is now id {held[0]} epoch {held[1]}; "
                     f"this instance (id {current[0]} epoch {current[1]}) is fenced")
    if held is None:
        next_id, identity = new_id(next_id)
    else:
        next_id, identity = next_epoch(held, next_id)
    mapping = dict(producers)
    mapping[name] = identity
    return mapping, next_id, identity
