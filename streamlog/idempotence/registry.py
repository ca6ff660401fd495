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

from streamlog.idempotence.rules import MAX_EPOCH, MAX_PRODUCER_ID

#: (producer id, epoch)
Identity = tuple[int, int]


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


def register_once(producers: Mapping[str, Identity], tokens: Mapping[str, str], next_id: int, name: str,
                  current: Identity | None = None, token: str | None = None,
                  ) -> tuple[dict[str, Identity], dict[str, str], int, Identity]:
    """L{register}, recognising a resend: C{(mapping, tokens, next id, identity)}.

    C{token}: the C{request_token} the client chose for this request (or
    None).  The registry keeps each name's last token: the same name and
    token again (a resend after the answer was lost) is answered with the
    identity the first one was given, and changes nothing: without it, the
    resend would bump the epoch again, and one naming C{current} would be
    told that this very instance is fenced.  The window is therefore "until
    the name's next C{InitProducerId}", one token per name.
    """
    held = producers.get(name)
    if token is not None and held is not None and tokens.get(name) == token:
        return dict(producers), dict(tokens), next_id, held
    mapping, next_id, identity = _register(producers, next_id, name, current)
    kept = dict(tokens)
    if token is None:
        kept.pop(name, None)
    else:
        kept[name] = token
    return mapping, kept, next_id, identity


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
