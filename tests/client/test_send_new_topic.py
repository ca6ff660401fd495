"""The first Send/SendBatch to a topic the client has not seen goes to any node, which may
auto-create it without leading the partition it chose: the NOT_LEADER answer (nothing was
appended) sends the client to the topic's metadata and the partition's leader, instead of asking
the same node again until the request timeout (review of client-stall, "noticed" N1: 3 of 5 first
sends failed so on real nodes)."""

from __future__ import annotations

from fake_cluster import close_client, cluster_client, run_until, settled
from twisted.python.failure import Failure


def created_elsewhere(cluster, partitions=3):
    """Each node auto-creates an unknown topic with every partition led by another node (as a
    real node does when the new partitions' elections go elsewhere)."""
    for node_id, node in cluster.nodes.items():
        other = next(n for n in sorted(cluster.nodes) if n != node_id)

        def create(params, other=other):
            if params.get("topic") not in cluster.topics:
                cluster.create_topic(params["topic"], partitions, leaders=[other])
            return None

        node.faults["Send"] = node.faults["SendBatch"] = create


def answered_soon(clock, cluster, d, within=1.0):
    """C{d}'s result, which must be no failure and come within C{within} s (not the timeout)."""
    began = clock.seconds()
    result = settled(clock, cluster, d, limit=15)
    assert not isinstance(result, Failure), result
    assert clock.seconds() - began < within
    return result


def warm(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])  # the client has used a topic: its view is not empty
    d = client.send("t", {"n": 0}, partition=0)
    run_until(clock, cluster, lambda: d.called)


def test_the_first_send_to_a_new_topic_follows_the_leader(clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        warm(clock, cluster, client)
        created_elsewhere(cluster)
        answer = answered_soon(clock, cluster, client.send("new", {"n": 1}))
        assert [v for p in range(3) for v in cluster.values("new", p)] == [{"n": 1}]
        assert answer["offset"] == 0
    finally:
        close_client(client, cluster)


def test_the_first_send_batch_to_a_new_topic_follows_the_leaders(clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        warm(clock, cluster, client)
        created_elsewhere(cluster)
        messages = [{"value": {"n": i}, "key": f"k{i}"} for i in range(10)]
        answer = answered_soon(clock, cluster, client.send_batch("new", messages))
        assert sorted(v["n"] for p in range(3) for v in cluster.values("new", p)) == list(range(10))
        assert sum(part["count"] for part in answer["partitions"]) == 10
    finally:
        close_client(client, cluster)


def test_a_new_topic_whose_node_leads_the_chosen_partition_is_sent_to_once(clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        warm(clock, cluster, client)
        answered_soon(clock, cluster, client.send("new", {"n": 1}))  # the fake's auto-create: led by the taker
        assert len([p for _, p in cluster.sent("Send") if p["topic"] == "new"]) == 1
    finally:
        close_client(client, cluster)


def test_a_producer_not_idempotent_places_a_new_topics_messages_at_the_leader(clock, cluster):
    from streamlog.client import Producer

    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        warm(clock, cluster, client)
        created_elsewhere(cluster)
        producer = Producer(client, linger_ms=1, idempotent=False)
        began = clock.seconds()
        sent = [producer.send("new", {"n": i}) for i in range(5)]
        run_until(clock, cluster, lambda: all(d.called for d in sent), limit=15)
        bad = [r for r in (d.result for d in sent) if isinstance(r, Failure)]
        assert not bad, bad[0]
        assert clock.seconds() - began < 1.0
        assert sorted(v["n"] for p in range(3) for v in cluster.values("new", p)) == list(range(5))
    finally:
        close_client(client, cluster)


def created_partly_here(cluster, partitions=3):
    """Each node auto-creates an unknown topic leading its first partition itself and the others
    led by the other nodes: a SendBatch there is taken only in part (error entries for the rest)."""
    for node_id, node in cluster.nodes.items():
        others = [n for n in sorted(cluster.nodes) if n != node_id]

        def create(params, node_id=node_id, others=others):
            if params.get("topic") not in cluster.topics:
                cluster.create_topic(params["topic"], partitions, leaders=[node_id, *others])
            return None

        node.faults["SendBatch"] = create


def test_a_new_topics_send_batch_taken_in_part_sends_the_refused_parts_to_their_leaders(clock, cluster):
    # Gap noticed last session: the node's per-partition NOT_LEADER entries came back to the
    # caller as its answer, with those messages never appended.
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        warm(clock, cluster, client)
        created_partly_here(cluster)
        messages = [{"value": {"n": i}, "key": f"k{i}"} for i in range(12)] + [{"value": {"n": 12}}]
        answer = answered_soon(clock, cluster, client.send_batch("new", messages))
        held = {p: [v["n"] for v in cluster.values("new", p)] for p in range(3)}
        assert sorted(n for values in held.values() for n in values) == list(range(13))  # each once
        assert len(held) == 3 and all(held.values())  # the batch did span the three partitions
        entries = answer["partitions"]
        assert not [e for e in entries if "error" in e], entries
        assert sorted(e["partition"] for e in entries) == [0, 1, 2]
        for e in entries:  # each entry's offsets are where its messages are
            assert e["count"] == len(held[e["partition"]]) and e["base_offset"] == 0
    finally:
        close_client(client, cluster)


def test_only_parts_surely_not_appended_are_resent():
    from streamlog.client.cluster import _resendable

    assert _resendable({"partition": 1, "error": {"code": "NOT_LEADER", "message": "m"}})
    assert _resendable({"partition": 1, "error": {"code": "LEADER_NOT_AVAILABLE", "message": "m"}})
    # It may still commit there: resending could append it twice.
    assert not _resendable({"partition": 1, "error": {"code": "NOT_LEADER", "message": "m", "maybe_appended": True}})
    assert not _resendable({"partition": 1, "error": {"code": "OUT_OF_ORDER_SEQUENCE", "message": "m"}})
    assert not _resendable({"partition": 1, "base_offset": 0, "count": 2})


def test_the_refused_parts_messages_are_found_from_the_nodes_counts():
    from streamlog.client.cluster import _messages_of
    from streamlog.partitioner import partition_for_key

    messages = [{"value": 0, "partition": 2}, {"value": 1}, {"value": 2, "key": "a"}, {"value": 3}]
    a = partition_for_key("a", 3)
    counts = {2: 1}
    counts[a] = counts.get(a, 0) + 1
    sticky = next(p for p in range(3) if p != 2)  # the unkeyed pair went here
    counts[sticky] = counts.get(sticky, 0) + 2
    entries = [{"partition": p, "count": n} for p, n in counts.items()]
    found = _messages_of({sticky: None}, entries, messages, 3)
    assert [m["value"] for m in found] == ([1, 2, 3] if a == sticky else [1, 3])  # in request order
    assert all(m["partition"] == sticky for m in found)
    # Counts that fit no single sticky partition (another partition count): none is guessed.
    assert _messages_of({sticky: None}, [{"partition": 0, "count": 9}], messages, 3) is None


def test_error_entries_carry_no_count_and_the_unkeyed_ones_are_resent_only_if_surely_refused():
    # Review of producer-merge: the broker's error entries have no "count" (the fake gave them
    # one), so finding the refused messages raised KeyError and failed the whole SendBatch.
    from streamlog.client.cluster import _messages_of
    from streamlog.partitioner import partition_for_key

    keys = {partition_for_key(k, 3): k for k in (f"k{i}" for i in range(40))}
    messages = [{"value": p, "key": keys[p]} for p in range(3)] + [{"value": "u"}]
    not_leader = {"code": "NOT_LEADER", "message": "m"}
    # Partition 0 taken with only its keyed message: the unkeyed one is on 1 or 2, both refused.
    entries = [{"partition": 0, "base_offset": 0, "count": 1},
               {"partition": 1, "error": not_leader}, {"partition": 2, "error": not_leader}]
    found = _messages_of({1: None, 2: None}, entries, messages, 3)
    assert [m["value"] for m in found] == [1, 2, "u"] and found[2]["partition"] in (1, 2)
    # ... but if one of those parts may hold it already (not resendable), nothing is guessed.
    maybe = {**not_leader, "maybe_appended": True}
    entries[2] = {"partition": 2, "error": maybe}
    assert _messages_of({1: None}, entries, messages, 3) is None
    # An erring part no keyed message names is where the unkeyed ones went.
    only_keyed = [messages[0], messages[1], messages[3]]
    entries = [{"partition": 0, "base_offset": 0, "count": 1}, {"partition": 1, "error": maybe},
               {"partition": 2, "error": not_leader}]
    found = _messages_of({2: None}, entries, only_keyed, 3)
    assert [(m["value"], m["partition"]) for m in found] == [("u", 2)]


def timed_out_in_a_metadata_stall(clock, cluster, create, method, call):
    """C{call(client)}'s failure, when the node C{create} sets up answers its C{method} and from
    then on no node answers Metadata (the lookup after the refusal waits out each node's 10 s
    request timeout in turn): it must be the call's own C{TIMEOUT}, nothing sent, within its 10 s."""
    from streamlog import errors

    client = cluster_client(clock, cluster, request_timeout=10.0, stall_timeout=None)
    try:
        warm(clock, cluster, client)
        create(cluster)
        for node in cluster.nodes.values():
            def stall(params, before=node.faults[method]):
                for n in cluster.nodes.values():
                    n.black_hole = {"Metadata"}
                return before(params)

            node.faults[method] = stall
        began = clock.seconds()
        result = settled(clock, cluster, call(client), limit=60)
        assert clock.seconds() - began <= 10.0 + 0.05
        assert isinstance(result, Failure) and result.check(errors.Timeout), result
        assert result.value.details.get("sent") is False
        return result.value
    finally:
        close_client(client, cluster)


def test_a_metadata_stall_while_resending_refused_parts_fails_within_the_timeout(clock, cluster):
    # Review: _resend_refused_parts looked the topic up with no deadline, so a stalled Metadata
    # (here 3 nodes x a 10 s request timeout) held the call 30 s past its 10 s.
    messages = [{"value": {"n": i}, "key": f"k{i}"} for i in range(12)] + [{"value": {"n": 12}}]
    error = timed_out_in_a_metadata_stall(clock, cluster, created_partly_here, "SendBatch",
                                          lambda client: client.send_batch("new", messages))
    # The part the node took is reported as appended, and only it was.
    taken = [p for p in range(3) if cluster.values("new", p)]
    assert len(taken) == 1, taken
    assert [(e["partition"], e["count"]) for e in error.details["appended"]] == [
        (p, len(cluster.values("new", p))) for p in taken]


def test_a_metadata_stall_after_a_new_topics_not_leader_fails_within_the_timeout(clock, cluster):
    # The same lookup after a NOT_LEADER for the whole request (_server_routed) had no deadline
    # either, and the leader's attempt then got the time left before it on top.
    timed_out_in_a_metadata_stall(clock, cluster, created_elsewhere, "Send", lambda client: client.send("new", {"n": 1}))
    assert not [v for p in range(3) for v in cluster.values("new", p)]
