"""The cluster metadata state machine (docs/cluster.md).

The metadata Raft group (`METADATA_GROUP`) replicates a log of *commands*; every node applies
each committed command, in log order, to its `ClusterState` with `apply`. Because two
proposals can race at the controller (two CreateTopic of one name, say), `apply` validates
each command against the state it meets and answers a `Refused` with a wire error code
instead of changing anything: every node refuses the same commands, so every node holds the
same state.

Three rules keep the replicas identical, and are the reason for most of this module's shape:

* `apply` is a pure function of (state, command, index): no clock, no randomness, no
  configuration of the node applying it. Anything a decision depends on travels in the
  command (the limits a CreateTopic is checked against are the controller's, copied into
  the command when it is proposed) or in the state.
* Decisions are recorded, not recomputed: a CreateTopic carries its replica assignment as
  chosen by `placement` at the controller, so a later, better placement algorithm can never
  make an upgraded node replay an old entry differently.
* Decoding is strict: an entry must be exactly what `encode_command` produced (canonical JSON,
  every field present with its type). A committed entry this node cannot decode was written
  by a newer version or is damaged; `decode_command` raises `CommandDecodeError` and the
  caller must stop applying (skipping it would fork this node's state from the others').

States are immutable (frozen attrs over read-only mappings): `apply` returns a new state and
shares everything it did not change, so keeping the state of an index for a snapshot is
keeping a reference.

Identities (design section 1): a node id is a small positive integer; an incarnation is the
16-hex id of a node's data directory (a wiped disk is a new incarnation); a Raft member id is
`"<node id>.<incarnation>"`; a topic id is 32 hex, derived from the cluster id and the index
of the CreateTopic entry, so it is unique forever (see `topic_id_for`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, TypeAlias

import attrs
import orjson

from streamlog import errors, wire
from streamlog.idempotence import registry
from streamlog.idempotence.rules import MAX_EPOCH
from streamlog.topic_config import TopicConfig

#: The Raft group id of the metadata group; its leader is the controller.
METADATA_GROUP: Final = "__meta"

#: Version of the snapshot encoding (`encode_snapshot`).
SNAPSHOT_VERSION: Final = 1

#: Node ids are 1..MAX_NODE_ID.
MAX_NODE_ID: Final = 2**31 - 1

#: The most producer ids one AllocateProducerIds may take (a node asks for a block at a time).
MAX_PRODUCER_ID_BLOCK: Final = 1 << 20

#: Producer ids are 0..MAX_PRODUCER_ID (signed 64-bit, as in the batch header).
MAX_PRODUCER_ID: Final = wire.MAX_INT64

_INCARNATION_RE = re.compile(r"[0-9a-f]{16}")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_MEMBER_RE = re.compile(r"([1-9][0-9]{0,9})\.([0-9a-f]{16})")
_GROUP_RE = re.compile(r"([0-9a-f]{32})-(0|[1-9][0-9]{0,9})")
# host:port, host a name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS_RE = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?):([0-9]{1,5})")

# Result codes that are not (yet) classes of streamlog.errors: they travel as codes.
STALE_INCARNATION: Final = "STALE_INCARNATION"
TOO_MANY_PARTITIONS: Final = "TOO_MANY_PARTITIONS"
PRODUCER_IDS_EXHAUSTED: Final = "PRODUCER_IDS_EXHAUSTED"


# ---------------------------------------------------------------------------- identities


def member_id(node_id: int, incarnation: str) -> str:
    """The Raft member id of a node's incarnation: `"2.9f3c01aa77e2b410"`."""
    return f"{node_id}.{incarnation}"


def parse_member_id(member: str) -> tuple[int, str]:
    """(node id, incarnation) of a member id; ValueError if it is not one."""
    if not isinstance(member, str):
        raise ValueError(f"not a member id (<node id>.<16 hex>): {member!r}")
    return _parse_member_id(member)


@functools.lru_cache(maxsize=4096)
def _parse_member_id(member: str) -> tuple[int, str]:
    # Memoized: a cluster has a handful of member ids, asked for thousands of times per
    # Metadata answer of 1,000 partitions (the regex was a quarter of its CPU). Bounded, and
    # an invalid id raises (exceptions are not cached).
    m = _MEMBER_RE.fullmatch(member)
    if m is None or int(m.group(1)) > MAX_NODE_ID:
        raise ValueError(f"not a member id (<node id>.<16 hex>): {member!r}")
    return int(m.group(1)), m.group(2)


def node_of(member: str) -> int:
    """The node id part of a member id (what the transport routes by)."""
    return parse_member_id(member)[0]


def is_incarnation(value: object) -> bool:
    return isinstance(value, str) and _INCARNATION_RE.fullmatch(value) is not None


def bootstrap_configuration(incarnations: Mapping[int, str]) -> tuple[str, ...]:
    """The metadata group's first configuration: the sorted member ids of every peer.

    `incarnations` is node id -> incarnation, as every node learns them from the hellos of
    a new cluster's first start (itself included). Sorted as strings, like every Raft
    configuration (`RaftNode` sorts voters the same way), so every node computes the same
    tuple.
    """
    members = []
    for node_id, incarnation in incarnations.items():
        if not _valid_node_id(node_id) or not is_incarnation(incarnation):
            raise ValueError(f"bad peer identity: node {node_id!r}, incarnation {incarnation!r}")
        members.append(member_id(node_id, incarnation))
    if not members:
        raise ValueError("a cluster needs at least one node")
    return tuple(sorted(members))


def cluster_id_for(configuration: Iterable[str]) -> str:
    """The cluster id: the first 32 hex of sha256 over the bootstrap configuration.

    The configuration is hashed in its stored form (a configuration batch's payload: the
    JSON array of the sorted member ids, compact), so it is the same on every node and can
    be recomputed from the metadata log's entry 1.
    """
    members = sorted(configuration)
    for m in members:
        parse_member_id(m)
    return hashlib.sha256(orjson.dumps(members)).hexdigest()[:32]


def topic_id_for(cluster_id: str, index: int) -> str:
    """The id of the topic created by the metadata entry at `index`.

    The design asked for a random id chosen by the controller. Deriving it from the entry
    index keeps what randomness was for (a topic deleted and re-created under its name gets
    a new id, so a replica left over on a node that was down during the delete can never
    join the new topic's groups) and adds two things: ids are unique by construction, even
    when the same CreateTopic is committed twice (a retried forward), and the first 16 hex
    *are* the creating index, so a node can tell from a group id alone whether its metadata
    has caught up with that group's creation (`topic_created_index`).
    """
    if not 1 <= index <= wire.MAX_INT64:
        raise ValueError(f"bad metadata index {index}")
    tail = hashlib.sha256(f"{cluster_id}:{index}".encode()).hexdigest()[:16]
    return f"{index:016x}{tail}"


def topic_created_index(topic_id: str) -> int:
    """The metadata index of the CreateTopic that made `topic_id` (see `topic_id_for`)."""
    if not isinstance(topic_id, str) or _HEX32_RE.fullmatch(topic_id) is None:
        raise ValueError(f"not a topic id: {topic_id!r}")
    return int(topic_id[:16], 16)


def partition_group(topic_id: str, partition: int) -> str:
    """The Raft group id of a partition: `"<topic id>-<partition>"`."""
    return f"{topic_id}-{partition}"


def parse_partition_group(group: str) -> tuple[str, int] | None:
    """(topic id, partition) of a partition group id; None for anything else (`"__meta"`)."""
    m = _GROUP_RE.fullmatch(group) if isinstance(group, str) else None
    if m is None:
        return None
    return m.group(1), int(m.group(2))


def _valid_node_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_NODE_ID


def valid_address(value: object) -> bool:
    """`host:port` with a port in 1..65535 (a bracketed IPv6 host is allowed)."""
    if not isinstance(value, str):
        return False
    m = _ADDRESS_RE.fullmatch(value)
    return m is not None and 1 <= int(m.group(2)) <= 65535


# ---------------------------------------------------------------------------- the state


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """A read-only view of a private copy (states are shared between indexes: never mutated)."""
    if isinstance(mapping, MappingProxyType):
        return mapping
    return MappingProxyType(dict(mapping))


@attrs.frozen
class NodeInfo:
    """A registered node: its current incarnation, its addresses, and its retired incarnations.

    `retired` holds every incarnation this node id had before: a data directory that was
    replaced (wiped, or a disk swapped) may hold votes and acknowledgements the group has
    since relied on being gone, so it may never come back (RegisterNode refuses it with
    STALE_INCARNATION) and its members are removed from every group.
    """

    node_id: int
    incarnation: str
    client_address: str
    peer_address: str
    retired: frozenset[str] = frozenset()

    @property
    def member(self) -> str:
        return member_id(self.node_id, self.incarnation)


@attrs.frozen
class PartitionInfo:
    """Where a partition lives: `replicas` are node ids, the preferred leader first;
    `initial_members` are the member ids its group started with (the incarnations of those
    nodes when the topic was created), written as entry 1 of every original replica's log."""

    replicas: tuple[int, ...]
    initial_members: tuple[str, ...]


@attrs.frozen
class TopicInfo:
    name: str
    topic_id: str
    config: TopicConfig
    partitions: tuple[PartitionInfo, ...]
    created_index: int

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].replicas)


@attrs.frozen(eq=True, hash=False)
class ClusterState:
    """The whole metadata, as of `applied_index` (the last metadata log index applied).

    `topic_ids` maps topic id -> name (the planner looks groups up by id). Build a first
    state with `ClusterState.empty(cluster_id)`; every later one comes from `apply`.
    """

    cluster_id: str
    applied_index: int = 0
    nodes: Mapping[int, NodeInfo] = attrs.field(factory=dict, converter=_frozen)
    topics: Mapping[str, TopicInfo] = attrs.field(factory=dict, converter=_frozen)
    topic_ids: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    next_producer_id: int = 0
    #: producer name -> (producer id, epoch): the named idempotent producers (InitProducer).
    producers: Mapping[str, tuple[int, int]] = attrs.field(factory=dict, converter=_frozen)
    #: producer name -> the request_token of its last InitProducer (a resend of it gets the same answer).
    producer_tokens: Mapping[str, registry.Tokens] = attrs.field(factory=dict, converter=_frozen)

    @classmethod
    def empty(cls, cluster_id: str) -> ClusterState:
        if not isinstance(cluster_id, str) or _HEX32_RE.fullmatch(cluster_id) is None:
            raise ValueError(f"a cluster id is 32 hex digits, not {cluster_id!r}")
        return cls(cluster_id)

    def topic_by_id(self, topic_id: str) -> TopicInfo | None:
        name = self.topic_ids.get(topic_id)
        return None if name is None else self.topics[name]

    def current_member(self, node_id: int) -> str | None:
        """The member id of a node's registered incarnation (None if not registered)."""
        node = self.nodes.get(node_id)
        return None if node is None else node.member

    def is_retired(self, member: str) -> bool:
        """True if `member` is an incarnation its node has been re-registered over: it is
        dead for good and must leave every group it is still a voter of."""
        try:
            node_id, incarnation = parse_member_id(member)
        except ValueError:
            return False
        node = self.nodes.get(node_id)
        return node is not None and incarnation in node.retired


# ---------------------------------------------------------------------------- queries the node needs


def intended_members(state: ClusterState, replicas: Iterable[int]) -> tuple[str, ...]:
    """The member ids a partition's group should have: each replica node's current
    incarnation, in replica order (preferred leader first). Replicas are always registered
    nodes (an invariant of the state)."""
    return tuple(state.nodes[n].member for n in replicas)


def metadata_members(state: ClusterState) -> tuple[str, ...]:
    """The member ids the metadata group should have: every registered node's current
    incarnation, sorted. (No cap on metadata voters yet: clusters are 3 or 5 nodes.)"""
    return tuple(sorted(node.member for node in state.nodes.values()))


@attrs.frozen
class HostedPartition:
    """One partition replica a node should hold."""

    group: str
    topic: TopicInfo
    partition: int

    @property
    def info(self) -> PartitionInfo:
        return self.topic.partitions[self.partition]


def hosted_partitions(state: ClusterState, node_id: int) -> list[HostedPartition]:
    """Every partition with a replica on `node_id`, by topic name then partition."""
    out = []
    for name in sorted(state.topics):
        topic = state.topics[name]
        for p, info in enumerate(topic.partitions):
            if node_id in info.replicas:
                out.append(HostedPartition(partition_group(topic.topic_id, p), topic, p))
    return out


def replica_counts(state: ClusterState) -> Counter[int]:
    """Node id -> how many partition replicas it holds (registered nodes with none count 0)."""
    counts: Counter[int] = Counter({n: 0 for n in state.nodes})
    for topic in state.topics.values():
        for info in topic.partitions:
            counts.update(info.replicas)
    return counts


def leader_counts(state: ClusterState) -> Counter[int]:
    """Node id -> how many partitions prefer it as leader (their first replica)."""
    counts: Counter[int] = Counter({n: 0 for n in state.nodes})
    for topic in state.topics.values():
        counts.update(info.replicas[0] for info in topic.partitions)
    return counts


# ---------------------------------------------------------------------------- commands


def _strict_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an integer, not {type(value).__name__}")


def _strict_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not str:
        raise TypeError(f"{attribute.name} must be a string, not {type(value).__name__}")


def _optional_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and type(value) is not str:
        raise TypeError(f"{attribute.name} must be a string or null, not {type(value).__name__}")


def _to_replicas(value: Any) -> Any:
    """Lists are accepted for convenience (JSON gives lists); stored as tuples."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in value):
        return tuple(tuple(p) for p in value)
    return value


def _replicas_shape(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not tuple or not all(
        type(p) is tuple and all(type(n) is int for n in p) for p in value
    ):
        raise TypeError("replicas must be a tuple of tuples of node ids")


def _config_shape(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not TopicConfig or not all(
        v is None or type(v) is int for v in value.to_dict().values()
    ):
        raise TypeError("config must be a TopicConfig of integers or nulls")


@attrs.frozen
class RegisterNode:
    """A node announces its incarnation and addresses (at first start, after a wipe, when an
    address changes). A new incarnation of a known node id retires the old one."""

    kind: ClassVar[str] = "register_node"
    node_id: int = attrs.field(validator=_strict_int)
    incarnation: str = attrs.field(validator=_strict_str)
    client_address: str = attrs.field(validator=_strict_str)
    peer_address: str = attrs.field(validator=_strict_str)

    @property
    def member(self) -> str:
        return member_id(self.node_id, self.incarnation)


@attrs.frozen
class CreateTopic:
    """Create a topic with the replica assignment chosen by `placement` at the controller.

    `max_partitions` (per topic) and `max_partitions_per_node` (replicas a node may hold) are
    the controller's limits when it proposed this, carried so every node checks the same.
    """

    kind: ClassVar[str] = "create_topic"
    topic: str = attrs.field(validator=_strict_str)
    replicas: tuple[tuple[int, ...], ...] = attrs.field(converter=_to_replicas, validator=_replicas_shape)
    config: TopicConfig = attrs.field(validator=_config_shape)
    max_partitions: int = attrs.field(validator=_strict_int)
    max_partitions_per_node: int = attrs.field(validator=_strict_int)


@attrs.frozen
class DeleteTopic:
    """Delete a topic by name; with `topic_id`, only if the name still has that id (so a
    delayed retry cannot delete a topic re-created under the same name)."""

    kind: ClassVar[str] = "delete_topic"
    topic: str = attrs.field(validator=_strict_str)
    topic_id: str | None = attrs.field(default=None, validator=_optional_str)


@attrs.frozen
class AllocateProducerIds:
    """Take the next `count` producer ids (a block a node hands out to idempotent producers)."""

    kind: ClassVar[str] = "allocate_producer_ids"
    count: int = attrs.field(validator=_strict_int)


def _optional_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and type(value) is not int:
        raise TypeError(f"{attribute.name} must be an integer or null, not {type(value).__name__}")


@attrs.frozen
class InitProducer:
    """Start (or continue) the named producer `name`: its id with the next epoch, fencing the
    older instances (streamlog.idempotence.registry). `producer_id` and `epoch`: the identity
    the asking instance holds when it asks for its own next epoch (both or neither)."""

    kind: ClassVar[str] = "init_producer"
    name: str = attrs.field(validator=_strict_str)
    producer_id: int | None = attrs.field(default=None, validator=_optional_int)
    epoch: int | None = attrs.field(default=None, validator=_optional_int)
    #: The client's C{request_token}: the same name and token again is a resend, answered as the
    #: first (streamlog.idempotence.registry.register_once). Left out of the entry when None.
    request_token: str | None = attrs.field(default=None, validator=_optional_str)


#: Fields a command's entry leaves out when None (added after entries without them were written).
_OPTIONAL_FIELDS = frozenset({"request_token"})


Command: TypeAlias = RegisterNode | CreateTopic | DeleteTopic | AllocateProducerIds | InitProducer

_COMMANDS: dict[str, type[Command]] = {
    cls.kind: cls for cls in (RegisterNode, CreateTopic, DeleteTopic, AllocateProducerIds, InitProducer)
}


# ---------------------------------------------------------------------------- results


@attrs.frozen
class Applied:
    """The command changed the state; `value` is the answer (JSON-safe)."""

    value: Mapping[str, Any] = attrs.field(factory=dict)

    ok: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {"result": dict(self.value)}


@attrs.frozen
class Refused:
    """The command was refused and changed nothing (but the applied index); `code` is a wire
    error code (docs/protocol.md, docs/cluster.md), `details` JSON-safe extra fields."""

    code: str
    message: str
    details: Mapping[str, Any] = attrs.field(factory=dict)

    ok: ClassVar[bool] = False

    @classmethod
    def from_error(cls, error: errors.StreamlogError) -> Refused:
        return cls(error.code, error.message, dict(error.details))

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def exception(self) -> errors.StreamlogError:
        """The StreamlogError a client should get (a generic one for codes without a class)."""
        return errors.from_wire(self.to_dict()["error"])


Result: TypeAlias = Applied | Refused


def result_from_dict(data: Any) -> Result:
    """Rebuild a result from `to_dict()` (as forwarded between nodes); ValueError if malformed."""
    if isinstance(data, dict) and set(data) == {"result"} and isinstance(data["result"], dict):
        return Applied(data["result"])
    if isinstance(data, dict) and set(data) == {"error"} and isinstance(data["error"], dict):
        error = dict(data["error"])
        code, message = error.pop("code", None), error.pop("message", None)
        if isinstance(code, str) and isinstance(message, str):
            return Refused(code, message, error)
    raise ValueError(f"not a metadata result: {data!r:.200}")


def _invalid(message: str, **details: Any) -> Refused:
    return Refused(errors.InvalidParams.code, message, details)


# ---------------------------------------------------------------------------- apply


def apply(state: ClusterState, command: Command, index: int) -> tuple[ClusterState, Result]:
    """Apply one committed command at metadata log `index`: (new state, result).

    Deterministic and total: a structurally valid command never raises, it is applied or
    refused (a refusal changes nothing but `applied_index`). An `index` that does not move
    forward is a bug in the caller (an entry applied twice) and raises ValueError (TypeError
    if it is not an int).
    """
    _check_index(state, index)
    if isinstance(command, RegisterNode):
        new, result = _register_node(state, command)
    elif isinstance(command, CreateTopic):
        new, result = _create_topic(state, command, index)
    elif isinstance(command, DeleteTopic):
        new, result = _delete_topic(state, command)
    elif isinstance(command, AllocateProducerIds):
        new, result = _allocate_producer_ids(state, command)
    elif isinstance(command, InitProducer):
        new, result = _init_producer(state, command)
    else:
        raise TypeError(f"not a metadata command: {command!r}")
    return attrs.evolve(new, applied_index=index), result


def apply_entry(state: ClusterState, data: bytes, index: int) -> tuple[ClusterState, Result | None]:
    """Apply the metadata log entry at `index`: empty data (a no-op or a configuration
    entry) only moves `applied_index`; anything else is decoded (CommandDecodeError if it
    cannot be: stop, do not skip) and applied. The wiring calls this for every committed
    entry, so `applied_index` says how far the state has caught up with the log."""
    if not data:
        _check_index(state, index)
        return attrs.evolve(state, applied_index=index), None
    return apply(state, decode_command(data), index)


def _check_index(state: ClusterState, index: object) -> None:
    if type(index) is not int:
        raise TypeError(f"a metadata index is an int, not {type(index).__name__}")
    if index <= state.applied_index:
        raise ValueError(f"metadata index {index} applied after {state.applied_index} (an entry applied twice?)")


def _register_node(state: ClusterState, cmd: RegisterNode) -> tuple[ClusterState, Result]:
    if not _valid_node_id(cmd.node_id):
        return state, _invalid(f"node id must be between 1 and {MAX_NODE_ID}, got {cmd.node_id}")
    if not is_incarnation(cmd.incarnation):
        return state, _invalid(f"an incarnation is 16 lowercase hex digits, not {cmd.incarnation[:40]!r}")
    for name in ("client_address", "peer_address"):
        value = getattr(cmd, name)
        if not valid_address(value):
            return state, _invalid(f"{name} must be host:port, not {value[:300]!r}")
    old = state.nodes.get(cmd.node_id)
    replaced = None
    if old is None:
        node = NodeInfo(cmd.node_id, cmd.incarnation, cmd.client_address, cmd.peer_address)
    elif cmd.incarnation == old.incarnation:
        node = attrs.evolve(old, client_address=cmd.client_address, peer_address=cmd.peer_address)
    elif cmd.incarnation in old.retired:
        return state, Refused(
            STALE_INCARNATION,
            f"node {cmd.node_id} incarnation {cmd.incarnation} was replaced by {old.incarnation}; "
            "its data directory must not rejoin (wipe it to join as a new incarnation)",
            {"node_id": cmd.node_id, "incarnation": cmd.incarnation, "current": old.incarnation},
        )
    else:
        replaced = old.incarnation
        node = NodeInfo(cmd.node_id, cmd.incarnation, cmd.client_address, cmd.peer_address,
                        old.retired | {old.incarnation})
    nodes = dict(state.nodes)
    nodes[cmd.node_id] = node
    value = {"node_id": cmd.node_id, "incarnation": cmd.incarnation, "replaced": replaced}
    return attrs.evolve(state, nodes=nodes), Applied(value)


def check_create_topic(state: ClusterState, cmd: CreateTopic) -> Refused | None:
    """Every reason `apply` would refuse `cmd` in `state` (None: it would be applied).

    The controller runs the same checks before proposing (placement.create_topic_command),
    so most refusals cost no Raft round trip; `apply` runs them again because another
    proposal may have committed in between.
    """
    try:
        wire.parse_create_topic({"topic": cmd.topic, "config": cmd.config.to_dict()})
    except errors.StreamlogError as e:
        return Refused.from_error(e)
    if cmd.topic in state.topics:
        return Refused(errors.TopicExists.code, f"topic {cmd.topic!r} already exists", {"topic": cmd.topic})
    for name in ("max_partitions", "max_partitions_per_node"):
        if getattr(cmd, name) < 1:
            return _invalid(f"{name} must be at least 1")
    count = len(cmd.replicas)
    if not 1 <= count <= cmd.max_partitions:
        return _invalid(f"'partitions' must be between 1 and {cmd.max_partitions}, got {count}",
                        field="partitions")
    rf = len(cmd.replicas[0])
    if rf < 1:
        return _invalid("replication factor must be at least 1", field="replication_factor")
    for p, replicas in enumerate(cmd.replicas):
        if len(replicas) != rf:
            return _invalid(f"partition {p} has {len(replicas)} replicas, partition 0 has {rf}")
        if len(set(replicas)) != rf:
            return _invalid(f"partition {p} names a node twice: {list(replicas)}")
        for n in replicas:
            if n not in state.nodes:
                return _invalid(f"partition {p}: node {n} is not registered")
    counts = replica_counts(state)
    added = Counter(n for replicas in cmd.replicas for n in replicas)
    for n in sorted(added):
        if counts[n] + added[n] > cmd.max_partitions_per_node:
            return Refused(
                TOO_MANY_PARTITIONS,
                f"node {n} holds {counts[n]} partition replicas; {added[n]} more would pass the limit of "
                f"{cmd.max_partitions_per_node} per node",
                {"limit": cmd.max_partitions_per_node, "node": n, "partitions": counts[n]},
            )
    return None


def _create_topic(state: ClusterState, cmd: CreateTopic, index: int) -> tuple[ClusterState, Result]:
    refused = check_create_topic(state, cmd)
    if refused is not None:
        return state, refused
    topic_id = topic_id_for(state.cluster_id, index)
    partitions = tuple(PartitionInfo(replicas, intended_members(state, replicas)) for replicas in cmd.replicas)
    topic = TopicInfo(cmd.topic, topic_id, cmd.config, partitions, index)
    topics = dict(state.topics)
    topics[cmd.topic] = topic
    topic_ids = dict(state.topic_ids)
    topic_ids[topic_id] = cmd.topic
    value = {
        "topic": cmd.topic,
        "topic_id": topic_id,
        "partitions": len(partitions),
        "replication_factor": topic.replication_factor,
        "replicas": [list(p.replicas) for p in partitions],
    }
    return attrs.evolve(state, topics=topics, topic_ids=topic_ids), Applied(value)


def _delete_topic(state: ClusterState, cmd: DeleteTopic) -> tuple[ClusterState, Result]:
    try:
        wire.check_topic_name(cmd.topic)
    except errors.StreamlogError as e:
        return state, Refused.from_error(e)
    topic = state.topics.get(cmd.topic)
    if topic is None:
        return state, Refused(errors.UnknownTopic.code, f"no topic {cmd.topic!r}", {"topic": cmd.topic})
    if cmd.topic_id is not None and cmd.topic_id != topic.topic_id:
        return state, Refused(
            errors.UnknownTopic.code,
            f"topic {cmd.topic!r} is now {topic.topic_id}; {cmd.topic_id} was deleted already",
            {"topic": cmd.topic},
        )
    topics = dict(state.topics)
    del topics[cmd.topic]
    topic_ids = dict(state.topic_ids)
    del topic_ids[topic.topic_id]
    return attrs.evolve(state, topics=topics, topic_ids=topic_ids), Applied(
        {"topic": cmd.topic, "topic_id": topic.topic_id})


def _allocate_producer_ids(state: ClusterState, cmd: AllocateProducerIds) -> tuple[ClusterState, Result]:
    if not 1 <= cmd.count <= MAX_PRODUCER_ID_BLOCK:
        return state, _invalid(f"'count' must be between 1 and {MAX_PRODUCER_ID_BLOCK}, got {cmd.count}",
                               field="count")
    first = state.next_producer_id
    if first + cmd.count - 1 > MAX_PRODUCER_ID:
        return state, Refused(PRODUCER_IDS_EXHAUSTED, f"only {MAX_PRODUCER_ID + 1 - first} producer ids are left",
                              {"left": MAX_PRODUCER_ID + 1 - first})
    return attrs.evolve(state, next_producer_id=first + cmd.count), Applied({"first": first, "count": cmd.count})


def _init_producer(state: ClusterState, cmd: InitProducer) -> tuple[ClusterState, Result]:
    if not cmd.name or len(cmd.name) > wire.DEFAULT_LIMITS.max_id_length or "\x00" in cmd.name:
        return state, _invalid(f"a producer name is 1 to {wire.DEFAULT_LIMITS.max_id_length} characters, without NUL",
                               field="producer_name")
    if (cmd.producer_id is None) != (cmd.epoch is None):
        return state, _invalid("'producer_id' and 'epoch' go together", field="producer_id")
    if cmd.request_token is not None and not wire.valid_request_token(cmd.request_token):
        return state, _invalid(wire.REQUEST_TOKEN_RULE, field="request_token")
    current = None if cmd.producer_id is None or cmd.epoch is None else (cmd.producer_id, cmd.epoch)
    try:
        producers, tokens, next_id, (producer_id, epoch) = registry.register_once(
            state.producers, state.producer_tokens, state.next_producer_id, cmd.name, current, cmd.request_token)
    except registry.Fenced as e:
        return state, Refused(errors.ProducerFenced.code, str(e), {"producer_name": cmd.name})
    except registry.Exhausted as e:
        return state, Refused(PRODUCER_IDS_EXHAUSTED, str(e), {"left": 0})
    return attrs.evolve(state, producers=producers, producer_tokens=tokens, next_producer_id=next_id), Applied(
        {"producer_id": producer_id, "epoch": epoch})


# ---------------------------------------------------------------------------- encoding


class CommandDecodeError(ValueError):
    """A metadata log entry is not a command this version understands."""


class SnapshotDecodeError(ValueError):
    """Snapshot bytes are not a valid metadata snapshot this version understands."""


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _config_to_json(config: TopicConfig) -> dict[str, int | None]:
    return config.to_dict()


def encode_command(command: Command) -> bytes:
    """The entry bytes of a command: canonical JSON (sorted keys, every field present)."""
    out: dict[str, Any] = {"type": command.kind}
    for field in attrs.fields(type(command)):
        value = getattr(command, field.name)
        if value is None and field.name in _OPTIONAL_FIELDS:
            continue
        if field.name == "config":
            value = _config_to_json(value)
        elif field.name == "replicas":
            value = [list(p) for p in value]
        out[field.name] = value
    return _dumps(out)


def _loads(data: bytes, error: type[ValueError]) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"expected bytes, got {type(data).__name__}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise error(f"not JSON: {e}") from None


def _config_from_json(value: Any, where: str) -> TopicConfig:
    names = [f.name for f in attrs.fields(TopicConfig)]
    if not isinstance(value, dict) or set(value) != set(names):
        raise ValueError(f"{where} must be an object with exactly {', '.join(names)}")
    for name in names:
        if value[name] is not None and type(value[name]) is not int:
            raise ValueError(f"{where}.{name} must be an integer or null")
    return TopicConfig(**value)


def _replicas_from_json(value: Any) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        raise ValueError("replicas must be an array of arrays of node ids")
    return tuple(tuple(p) for p in value)


def decode_command(data: bytes) -> Command:
    """Parse entry bytes back into a command; CommandDecodeError for anything else.

    Checks the shape (type tag, exactly the fields, their JSON types) and that the bytes are
    canonical (what `encode_command` makes of the result), which also refuses duplicate
    keys, stray whitespace and other forms that would mean two nodes could read one entry
    two ways. Meaning (names, ranges, references) is `apply`'s to check.
    """
    obj = _loads(data, CommandDecodeError)
    if not isinstance(obj, dict):
        raise CommandDecodeError("a metadata command is a JSON object")
    kind = obj.get("type")
    cls = _COMMANDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CommandDecodeError(f"unknown metadata command type {kind!r:.80} (a newer version wrote it?)")
    names = {f.name for f in attrs.fields(cls)}
    keys = set(obj) - {"type"}
    if keys != names and not (keys < names and names - keys <= _OPTIONAL_FIELDS):
        missing, extra = sorted(names - keys), sorted(keys - names)
        raise CommandDecodeError(f"{kind}: missing fields {missing}, unknown fields {extra}")
    kwargs = dict(obj)
    del kwargs["type"]
    try:
        if "config" in kwargs:
            kwargs["config"] = _config_from_json(kwargs["config"], "config")
        if "replicas" in kwargs:
            kwargs["replicas"] = _replicas_from_json(kwargs["replicas"])
        command = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CommandDecodeError(f"{kind}: {e}") from None
    if encode_command(command) != bytes(data):
        raise CommandDecodeError(f"{kind}: entry is not canonical JSON (duplicate keys, key order or whitespace)")
    return command


def encode_snapshot(state: ClusterState) -> bytes:
    """The state as canonical JSON, versioned: the metadata group's snapshot data (what a
    node that fell behind the controller's log start installs, and what the controller
    keeps when it compacts its log)."""
    top: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "cluster_id": state.cluster_id,
        "applied_index": state.applied_index,
        "next_producer_id": state.next_producer_id,
        "nodes": [
            {
                "node_id": n.node_id,
                "incarnation": n.incarnation,
                "client_address": n.client_address,
                "peer_address": n.peer_address,
                "retired": sorted(n.retired),
            }
            for _, n in sorted(state.nodes.items())
        ],
        "topics": [
            {
                "name": t.name,
                "topic_id": t.topic_id,
                "created_index": t.created_index,
                "config": _config_to_json(t.config),
                "partitions": [
                    {"replicas": list(p.replicas), "initial_members": list(p.initial_members)}
                    for p in t.partitions
                ],
            }
            for _, t in sorted(state.topics.items())
        ],
    }
    if state.producers:  # absent when empty: snapshots written before named producers stay canonical
        # A name's recent request_tokens, if it had any, as a fourth element (registry.tokens_to_json).
        top["producers"] = [
            [name, pid, epoch] + ([registry.tokens_to_json(state.producer_tokens[name], (pid, epoch))]
                                  if name in state.producer_tokens else [])
            for name, (pid, epoch) in sorted(state.producers.items())]
    return _dumps(top)


def _object(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"{where} must be an object with exactly {sorted(keys)}")
    return value


def _typed(value: Any, kind: type, where: str) -> Any:
    if type(value) is not kind:
        raise ValueError(f"{where} must be of type {kind.__name__}")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        raise ValueError(f"{where} must be an array of strings")
    return value


def decode_snapshot(data: bytes) -> ClusterState:
    """Parse a snapshot back into a state; SnapshotDecodeError unless it is well formed,
    of a known version, canonical, and a state that `apply` could have produced (every
    invariant of `check_state` holds)."""
    obj = _loads(data, SnapshotDecodeError)
    if not isinstance(obj, dict) or type(obj.get("version")) is not int:
        raise SnapshotDecodeError("a metadata snapshot is an object with an integer 'version'")
    if obj["version"] != SNAPSHOT_VERSION:
        raise SnapshotDecodeError(f"metadata snapshot version {obj['version']} is not {SNAPSHOT_VERSION}")
    try:
        keys = {"version", "cluster_id", "applied_index", "next_producer_id", "nodes", "topics"}
        top = _object(obj, keys | ({"producers"} if "producers" in obj else set()), "snapshot")
        producers: dict[str, tuple[int, int]] = {}
        producer_tokens: dict[str, registry.Tokens] = {}
        raw_producers = top.get("producers", [])
        if not isinstance(raw_producers, list):
            raise ValueError("producers must be an array")
        for i, item in enumerate(raw_producers):
            if (not isinstance(item, list) or len(item) not in (3, 4) or type(item[0]) is not str
                    or type(item[1]) is not int or type(item[2]) is not int):
                raise ValueError(f"producers[{i}] must be [name, producer id, epoch] or [..., request tokens]")
            if item[0] in producers:
                raise ValueError(f"producer {item[0]!r} appears twice")
            producers[item[0]] = (item[1], item[2])
            if len(item) == 4:
                producer_tokens[item[0]] = registry.tokens_from_json(item[3], (item[1], item[2]))
        nodes: dict[int, NodeInfo] = {}
        if not isinstance(top["nodes"], list):
            raise ValueError("nodes must be an array")
        for i, raw in enumerate(top["nodes"]):
            n = _object(raw, {"node_id", "incarnation", "client_address", "peer_address", "retired"}, f"nodes[{i}]")
            node = NodeInfo(
                _typed(n["node_id"], int, f"nodes[{i}].node_id"),
                _typed(n["incarnation"], str, f"nodes[{i}].incarnation"),
                _typed(n["client_address"], str, f"nodes[{i}].client_address"),
                _typed(n["peer_address"], str, f"nodes[{i}].peer_address"),
                frozenset(_str_list(n["retired"], f"nodes[{i}].retired")),
            )
            if node.node_id in nodes:
                raise ValueError(f"node {node.node_id} appears twice")
            nodes[node.node_id] = node
        topics: dict[str, TopicInfo] = {}
        if not isinstance(top["topics"], list):
            raise ValueError("topics must be an array")
        for i, raw in enumerate(top["topics"]):
            t = _object(raw, {"name", "topic_id", "created_index", "config", "partitions"}, f"topics[{i}]")
            if not isinstance(t["partitions"], list):
                raise ValueError(f"topics[{i}].partitions must be an array")
            partitions = []
            for j, rawp in enumerate(t["partitions"]):
                p = _object(rawp, {"replicas", "initial_members"}, f"topics[{i}].partitions[{j}]")
                replicas = p["replicas"]
                if not isinstance(replicas, list) or not all(type(r) is int for r in replicas):
                    raise ValueError(f"topics[{i}].partitions[{j}].replicas must be an array of node ids")
                members = _str_list(p["initial_members"], f"topics[{i}].partitions[{j}].initial_members")
                partitions.append(PartitionInfo(tuple(replicas), tuple(members)))
            topic = TopicInfo(
                _typed(t["name"], str, f"topics[{i}].name"),
                _typed(t["topic_id"], str, f"topics[{i}].topic_id"),
                _config_from_json(t["config"], f"topics[{i}].config"),
                tuple(partitions),
                _typed(t["created_index"], int, f"topics[{i}].created_index"),
            )
            if topic.name in topics:
                raise ValueError(f"topic {topic.name!r} appears twice")
            topics[topic.name] = topic
        state = ClusterState(
            cluster_id=_typed(top["cluster_id"], str, "cluster_id"),
            applied_index=_typed(top["applied_index"], int, "applied_index"),
            nodes=nodes,
            topics=topics,
            topic_ids={t.topic_id: t.name for t in topics.values()},
            next_producer_id=_typed(top["next_producer_id"], int, "next_producer_id"),
            producers=producers,
            producer_tokens=producer_tokens,
        )
        check_state(state)
    except ValueError as e:
        raise SnapshotDecodeError(f"bad metadata snapshot: {e}") from None
    if encode_snapshot(state) != bytes(data):
        raise SnapshotDecodeError("metadata snapshot is not canonical JSON (duplicate keys, order or whitespace)")
    return state


# ---------------------------------------------------------------------------- invariants


def check_state(state: ClusterState) -> None:
    """Raise ValueError naming the first invariant `state` breaks.

    These hold for every state `apply` produces (the property tests check it after every
    command) and are what a snapshot must satisfy to be installed.
    """
    if not isinstance(state.cluster_id, str) or _HEX32_RE.fullmatch(state.cluster_id) is None:
        raise ValueError(f"cluster id {state.cluster_id!r} is not 32 hex digits")
    if not 0 <= state.applied_index <= wire.MAX_INT64:
        raise ValueError(f"applied index {state.applied_index} out of range")
    if not 0 <= state.next_producer_id <= MAX_PRODUCER_ID + 1:
        raise ValueError(f"next producer id {state.next_producer_id} out of range")
    for name, (pid, epoch) in state.producers.items():
        if not 0 <= pid < state.next_producer_id or not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"producer {name[:260]!r}: id {pid} epoch {epoch} out of range")
    for name, recent in state.producer_tokens.items():
        if name not in state.producers or not 1 <= len(recent) <= registry.TOKENS_PER_NAME:
            raise ValueError(f"producer {name[:260]!r}: request tokens without a producer, or too many")
        for token, (pid, epoch) in recent:
            if not wire.valid_request_token(token) or not 0 <= pid < state.next_producer_id or not 0 <= epoch <= MAX_EPOCH:
                raise ValueError(f"producer {name[:260]!r}: a request token {token[:80]!r} malformed or given "
                                 f"id {pid} epoch {epoch} out of range")
    for node_id, node in state.nodes.items():
        if node_id != node.node_id or not _valid_node_id(node_id):
            raise ValueError(f"node {node_id!r} is filed under the wrong id or out of range")
        if not is_incarnation(node.incarnation) or not all(is_incarnation(r) for r in node.retired):
            raise ValueError(f"node {node_id} has a malformed incarnation")
        if node.incarnation in node.retired:
            raise ValueError(f"node {node_id}'s current incarnation is also retired")
        if not valid_address(node.client_address) or not valid_address(node.peer_address):
            raise ValueError(f"node {node_id} has a malformed address")
    if set(state.topic_ids) != {t.topic_id for t in state.topics.values()} or len(state.topic_ids) != len(
            state.topics):
        raise ValueError("topic ids are not unique or the id index disagrees with the topics")
    for name, topic in state.topics.items():
        if name != topic.name or state.topic_ids.get(topic.topic_id) != name:
            raise ValueError(f"topic {name!r} is filed under the wrong name or id")
        try:
            wire.parse_create_topic({"topic": name, "config": topic.config.to_dict()})
        except errors.StreamlogError as e:
            raise ValueError(f"topic {name[:260]!r}: {e.message}") from None
        if not 1 <= topic.created_index <= state.applied_index:
            raise ValueError(f"topic {name!r} created at {topic.created_index}, after the applied index")
        if topic.topic_id != topic_id_for(state.cluster_id, topic.created_index):
            raise ValueError(f"topic {name!r} has id {topic.topic_id}, not the one its index gives")
        if not topic.partitions:
            raise ValueError(f"topic {name!r} has no partitions")
        rf = len(topic.partitions[0].replicas)
        for p, info in enumerate(topic.partitions):
            if rf < 1 or len(info.replicas) != rf or len(set(info.replicas)) != rf:
                raise ValueError(f"topic {name!r} partition {p}: replicas {list(info.replicas)} are not {rf} nodes")
            if len(info.initial_members) != rf:
                raise ValueError(f"topic {name!r} partition {p}: initial members do not match the replicas")
            for n, member in zip(info.replicas, info.initial_members):
                replica = state.nodes.get(n)
                if replica is None:
                    raise ValueError(f"topic {name!r} partition {p}: node {n} is not registered")
                try:
                    member_node, incarnation = parse_member_id(member)
                except ValueError:
                    raise ValueError(f"topic {name!r} partition {p}: bad member {member!r}") from None
                if member_node != n or (incarnation != replica.incarnation and incarnation not in replica.retired):
                    raise ValueError(f"topic {name!r} partition {p}: member {member} is not an incarnation of node {n}")
