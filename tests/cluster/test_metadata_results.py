"""A node keeps the results of applied metadata entries only for a proposer that may ask:
a follower applies every entry and nobody asks, so without a bound its results pile up for
the life of the process (one per producer-id block, topic and node registration)."""

from types import SimpleNamespace

from streamlog.cluster import metadata as md
from streamlog.cluster import node as node_module
from streamlog.cluster.node import ClusterNode


class EntryLog:
    def __init__(self, entries):
        self._entries = entries

    def entries(self, first, end, max_bytes):
        return self._entries[first - 1:end - 1]


def applying_node(count):
    data = md.encode_command(md.AllocateProducerIds(count=1))
    node = ClusterNode.__new__(ClusterNode)
    node.state = md.ClusterState.empty("c" * 32)
    node.meta_log = EntryLog([SimpleNamespace(index=i, data=data) for i in range(1, count + 1)])
    node.meta_applied = 0
    node._results = {}
    node._applied_waiters = []
    node._snapshot_metadata = lambda: None
    node._after_apply = lambda: None
    return node


def test_a_follower_that_nobody_asks_keeps_a_bounded_number_of_results():
    count = node_module.RESULTS_KEPT + 1000
    node = applying_node(count)
    node.committed(node_module.META, count)
    assert node.meta_applied == count
    assert len(node._results) == node_module.RESULTS_KEPT
    assert min(node._results) == count - node_module.RESULTS_KEPT + 1  # the newest are kept


def test_a_proposer_asking_right_after_its_entry_applied_still_gets_its_result():
    node = applying_node(10)
    node.committed(node_module.META, 10)
    result = []
    node.applied(7).addCallback(result.append)
    assert isinstance(result[0], md.Applied)
    assert 7 not in node._results  # taken by its waiter
