"""C{<data-dir>/node.json}: who this data directory belongs to.

Written once when a data directory is first used by a node (its node id and
a new random incarnation), again when the cluster is bootstrapped (its
cluster id and the first members of the metadata group).  A wiped disk is a
new incarnation: a different Raft member, which can never vote twice in a
term or count towards a majority for entries it lost (docs/cluster.md).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import attrs
import orjson

from streamlog.storage.checkpoint import write_atomically

NODE_FILE = "node.json"


class IdentityError(Exception):
    """node.json cannot be used (another node's, damaged): one line for a person."""


@attrs.frozen
class NodeIdentity:
    node_id: int
    incarnation: str
    cluster_id: str | None = None
    #: node id -> incarnation of every member of the cluster's first metadata configuration.
    members: dict[int, str] = attrs.field(factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "version": 1, "node_id": self.node_id, "incarnation": self.incarnation,
            "cluster_id": self.cluster_id, "members": {str(k): v for k, v in sorted(self.members.items())},
        }, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, where: str) -> NodeIdentity:
        try:
            obj: Any = orjson.loads(data)
            return cls(int(obj["node_id"]), str(obj["incarnation"]), obj.get("cluster_id"),
                       {int(k): str(v) for k, v in (obj.get("members") or {}).items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise IdentityError(f"{where} is damaged ({e}); restore it, or wipe the data directory so that "
                                "this node rejoins as a new member") from None


def new_incarnation() -> str:
    return secrets.token_hex(8)


class IdentityStore:
    """Where a node keeps its identity: a file in the data directory, or (memory storage) nowhere."""

    def __init__(self, data_dir: str | None) -> None:
        self.path = os.path.join(data_dir, NODE_FILE) if data_dir is not None else None
        self._memory: NodeIdentity | None = None

    def load(self, node_id: int) -> NodeIdentity:
        """This directory's identity, created for C{node_id} if it has none; refuses another node's."""
        identity = self._read()
        if identity is None:
            identity = NodeIdentity(node_id, new_incarnation())
            self.save(identity)
        elif identity.node_id != node_id:
            raise IdentityError(f"the data dir belongs to node {identity.node_id}, not --node-id {node_id} "
                                f"({self.path}); give its own --node-id or another --data-dir")
        return identity

    def _read(self) -> NodeIdentity | None:
        if self.path is None:
            return self._memory
        try:
            with open(self.path, "rb") as f:
                return NodeIdentity.from_json(f.read(), self.path)
        except FileNotFoundError:
            return None

    def save(self, identity: NodeIdentity) -> None:
        if self.path is None:
            self._memory = identity
            return
        write_atomically(self.path, identity.to_json())
