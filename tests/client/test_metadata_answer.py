"""MetadataAnswer.parse: what the client accepts of a Metadata result."""

from __future__ import annotations

import pytest

from streamlog import errors
from streamlog.client.metadata import MetadataAnswer


def test_a_node_whose_address_is_not_known_yet_is_left_out():
    """In a cluster's first moments a node may not have heard of a peer yet (address null)."""
    answer = MetadataAnswer.parse({"cluster_id": "c", "controller": None, "topics": [], "nodes": [
        {"node_id": 1, "address": "127.0.0.1:7071", "up": True},
        {"node_id": 3, "address": None, "up": False}]})
    assert [(n.node_id, n.address) for n in answer.nodes] == [(1, "127.0.0.1:7071")]


@pytest.mark.parametrize("node", [{"node_id": 2, "address": 7}, {"node_id": 2}, "n2"])
def test_a_malformed_node_is_still_refused(node):
    with pytest.raises(errors.Internal, match="unexpected Metadata answer"):
        MetadataAnswer.parse({"nodes": [node], "topics": []})
