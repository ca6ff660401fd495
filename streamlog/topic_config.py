"""Per-topic settings, shared by the wire codec, the broker, the storage and the cluster metadata.

A neutral module (no storage, no broker) so that C{streamlog.wire}, which
the client uses too, does not import the storage to parse a CreateTopic
(ARCHITECTURE.md decision 13).  C{streamlog.storage.base} re-exports it.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class TopicConfig:
    """Per-topic settings; C{None} means "the server default"."""

    retention_ms: int | None = None
    retention_bytes: int | None = None
    segment_bytes: int | None = None
    segment_ms: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return attrs.asdict(self)

    def with_defaults(self, defaults: TopicConfig | None) -> TopicConfig:
        """These settings, with C{defaults} filling each one that is C{None}."""
        if defaults is None:
            return self
        return TopicConfig(**{
            k: (v if v is not None else getattr(defaults, k)) for k, v in self.to_dict().items()
        })


#: The internal topic holding every consumer group's committed offsets and membership.
OFFSETS_TOPIC = "__consumer_offsets"
#: Topics only the node itself writes, creates and deletes (INTERNAL_TOPIC for clients; Poll is allowed).
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC})


def internal_mark(name: str) -> dict[str, bool]:
    """What a topic's entry in ListTopics, DescribeTopic and Metadata adds: C{{"internal": true}}
    for an internal topic, nothing for the others."""
    return {"internal": True} if name in INTERNAL_TOPICS else {}
