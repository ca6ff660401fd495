"""The GroupConsumer against a real broker on in-memory transports and a Clock: members share
the partitions, resume from committed offsets, and nothing is skipped when one goes."""

from __future__ import annotations

from client_support import result_of, run_until, settle

from streamlog import errors
from streamlog.client import GroupConsumer


def produce(network, clock, client, count, partitions=4):
    result_of(settle(clock, network, client.create_topic("t", partitions=partitions)))
    for i in range(count):
        result_of(settle(clock, network, client.send("t", i, partition=i % partitions)))


class Reader:
    """Polls a member in a loop (as an application would), keeping what it got."""

    def __init__(self, member):
        self.member = member
        self.got = []
        self.running = True
        self._next()

    def _next(self):
        if self.running:
            self.member.poll().addCallbacks(self._batch, lambda f: None)

    def _batch(self, batch):
        self.got.extend((m["partition"], m["offset"], m["value"]) for m in batch)
        self._next()


def test_one_member_reads_every_partition_and_commits(network, clock, clients):
    client = clients()
    produce(network, clock, client, 20)
    events = []
    member = GroupConsumer(client, "g", ["t"], auto_commit_interval=None,
                           on_assigned=lambda tps: events.append(("assigned", tps)))
    reader = Reader(member)
    run_until(clock, network, lambda: len(reader.got) == 20)
    assert sorted(v for _, _, v in reader.got) == list(range(20))
    assert events == [("assigned", [("t", 0), ("t", 1), ("t", 2), ("t", 3)])]
    result_of(settle(clock, network, member.commit()))
    fetched = result_of(settle(clock, network, client.call("FetchOffsets", {"group": "g"})))["offsets"]
    assert [(o["partition"], o["offset"]) for o in fetched] == [(0, 5), (1, 5), (2, 5), (3, 5)]
    reader.running = False
    result_of(settle(clock, network, member.close()))


def test_two_members_split_the_partitions_and_a_closing_one_hands_over_without_a_gap(network, clock, clients):
    client = clients()
    produce(network, clock, client, 40)
    a = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=1.0, max_messages=2)
    reader_a = Reader(a)
    run_until(clock, network, lambda: len(a.consumers) == 4)
    revoked = []
    b = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=1.0, max_messages=2,
                      on_revoked=revoked.append)
    reader_b = Reader(b)
    run_until(clock, network, lambda: len(a.consumers) == 2 and len(b.consumers) == 2, limit=30)
    assert set(a.consumers).isdisjoint(b.consumers)
    run_until(clock, network, lambda: len({v for _, _, v in reader_a.got + reader_b.got}) == 40)
    # A closes (committing); B takes its partitions from A's committed offsets.
    for i in range(40, 60):
        result_of(settle(clock, network, client.send("t", i, partition=i % 4)))
    reader_a.running = False
    result_of(settle(clock, network, a.close()))
    run_until(clock, network, lambda: len(b.consumers) == 4, limit=30)
    run_until(clock, network, lambda: {v for _, _, v in reader_a.got + reader_b.got} == set(range(60)))
    seen = [v for _, _, v in reader_a.got + reader_b.got]
    assert sorted(set(seen)) == list(range(60))  # nothing skipped
    # Handed out twice only from the window not committed yet at a hand-over: at most one
    # batch (2 messages) per partition that moved, twice (B's join, A's close).
    assert len(seen) - 60 <= 2 * 4
    per_partition = {}
    for p, o, _ in reader_b.got:
        per_partition.setdefault(p, []).append(o)
    assert all(offsets == sorted(offsets) for offsets in per_partition.values())  # in order, per partition
    reader_b.running = False
    result_of(settle(clock, network, b.close()))
    # B was never asked to give anything up: it let go of all four when it closed.
    assert revoked == [[("t", 0), ("t", 1), ("t", 2), ("t", 3)]]


def test_a_member_that_stops_heartbeating_loses_its_partitions_to_the_others(network, clock, clients):
    client = clients()
    produce(network, clock, client, 16)
    a = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=2000, auto_commit_interval=0.2)
    b = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=2000, auto_commit_interval=0.2)
    reader_a, reader_b = Reader(a), Reader(b)
    run_until(clock, network, lambda: len(a.consumers) == 2 and len(b.consumers) == 2, limit=30)
    run_until(clock, network, lambda: len(reader_a.got) + len(reader_b.got) >= 16)
    clock.advance(0.5)
    network.pump()
    # A freezes (as SIGSTOP would): no more heartbeats, polls or commits.
    for timer in (a._heartbeat_timer, a._commit_timer):
        if timer is not None and timer.active():
            timer.cancel()
    a._closed = True
    reader_a.running = False
    for i in range(16, 24):
        result_of(settle(clock, network, client.send("t", i, partition=i % 4)))
    started = clock.seconds()
    run_until(clock, network, lambda: len(b.consumers) == 4, limit=10)
    assert clock.seconds() - started <= 2.0 + 1.0  # its session timeout, and a heartbeat of B
    run_until(clock, network, lambda: {v for _, _, v in reader_a.got + reader_b.got} >= set(range(24)))
    duplicates = len(reader_a.got) + len(reader_b.got) - 24
    assert duplicates >= 0
    reader_b.running = False
    for c in a.consumers.values():
        c.close()
    result_of(settle(clock, network, b.close()))


def test_a_member_cut_off_for_its_session_timeout_stops_reading_and_joins_again(network, clock, clients):
    client = clients()
    produce(network, clock, client, 4)
    lost = []
    member = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=2000, auto_commit_interval=None,
                           on_lost=lost.append)
    reader = Reader(member)
    run_until(clock, network, lambda: len(member.consumers) == 4)
    network.up = False
    network.drop()
    run_until(clock, network, lambda: bool(lost), limit=10)
    assert lost == [[("t", 0), ("t", 1), ("t", 2), ("t", 3)]] and member.consumers == {}
    network.up = True
    # Back: it joins as a new member (the old one expired meanwhile) and reads again.
    run_until(clock, network, lambda: len(member.consumers) == 4, limit=30)
    assert member.stats["joins"] == 2
    reader.running = False
    result_of(settle(clock, network, member.close()))


def committed(network, clock, client, group="g"):
    """The group's committed offsets, {partition: offset}."""
    answer = result_of(settle(clock, network, client.call("FetchOffsets", {"group": group})))
    return {o["partition"]: o["offset"] for o in answer["offsets"]}


def test_the_async_iterator_yields_batches_until_the_member_is_closed(network, clock, clients):
    from twisted.internet.defer import ensureDeferred

    client = clients()
    produce(network, clock, client, 12)
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None, max_messages=2)
    got = []

    async def consume():
        async for batch in member:
            got.extend((m["partition"], m["offset"]) for m in batch)
            if len(got) >= 12:
                await member.close()  # the loop ends: the next __anext__ stops the iteration
        return "done"

    d = ensureDeferred(consume())
    run_until(clock, network, lambda: d.called)
    assert result_of(d) == "done"
    assert sorted(got) == [(p, o) for p in range(4) for o in range(3)]
    # close() committed everything handed out.
    assert committed(network, clock, client) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_a_paused_partition_is_not_read_until_resumed_and_the_others_go_on(network, clock, clients):
    client = clients()
    produce(network, clock, client, 8)
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None)
    result_of(settle(clock, network, member.start_consuming()))
    run_until(clock, network, lambda: len(member.consumers) == 4)
    member.pause("t", 0)
    reader = Reader(member)
    run_until(clock, network, lambda: len(reader.got) == 6)
    later = clock.seconds() + 3  # three more polls of max_wait_ms: nothing of t/0 comes
    run_until(clock, network, lambda: clock.seconds() >= later, step=0.1)
    assert len(reader.got) == 6 and {p for p, _, _ in reader.got} == {1, 2, 3}
    assert ("t", 0) in member.consumers  # still assigned: pausing is not giving up
    member.resume("t", 0)
    run_until(clock, network, lambda: len(reader.got) == 8)
    assert sorted(o for p, o, _ in reader.got if p == 0) == [0, 1]
    reader.running = False
    result_of(settle(clock, network, member.close()))


def test_seek_moves_the_reading_and_the_next_commit_says_so_but_never_back(network, clock, clients):
    client = clients()
    produce(network, clock, client, 30, partitions=1)
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None, max_messages=5)

    def poll_once():
        """The next non-empty batch (a poll may fire with [] when partitions are granted)."""
        while True:
            batch = [m["offset"] for m in result_of(settle(clock, network, member.poll()))]
            if batch:
                return batch

    assert poll_once() + poll_once() == list(range(10))
    member.seek("t", 0, 20)  # forward: 10..19 are skipped on purpose
    assert poll_once() == [20, 21, 22, 23, 24]
    result_of(settle(clock, network, member.commit()))
    assert committed(network, clock, client) == {0: 25}
    member.seek("t", 0, 3)  # back: read again from 3...
    assert poll_once() == [3, 4, 5, 6, 7]
    failure = []
    member.commit().addErrback(failure.append)
    run_until(clock, network, lambda: bool(failure))
    # ...but a commit cannot move the group's offset back (only ResetOffsets can).
    assert failure[0].value.code == "OFFSET_BEHIND_COMMITTED"
    assert committed(network, clock, client) == {0: 25}
    result_of(settle(clock, network, member.close()))


def test_manual_commit_commits_what_was_handed_out_and_nothing_before_it(network, clock, clients):
    client = clients()
    produce(network, clock, client, 8)
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None, max_messages=1)
    got = []
    while len(got) < 3:
        got.extend((m["partition"], m["offset"]) for m in result_of(settle(clock, network, member.poll())))
    later = clock.seconds() + 10  # no auto-commit: nothing is committed by time passing
    run_until(clock, network, lambda: clock.seconds() >= later, step=0.1)
    assert committed(network, clock, client) == {}
    result_of(settle(clock, network, member.commit()))
    # Everything handed out, the last poll's batch included (commit() means: processed).
    assert committed(network, clock, client) == {p: o + 1 for p, o in got}
    assert member.stats["commits"] == 1
    result_of(settle(clock, network, member.commit()))  # nothing new: no request
    assert member.stats["commits"] == 1
    result_of(settle(clock, network, member.close()))


def test_a_revoke_commits_first_then_calls_on_revoked_then_the_other_member_gets_the_partitions(
        network, clock, clients):
    client = clients()
    produce(network, clock, client, 40)
    events = []

    def hook(name, member_name):
        def record(tps):
            # What the group has committed when the hook runs, for the partitions it names.
            events.append((member_name, name, tps))
        return record

    a = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None, max_messages=3,
                      on_assigned=hook("assigned", "a"), on_revoked=hook("revoked", "a"))
    reader_a = Reader(a)
    run_until(clock, network, lambda: len(reader_a.got) == 40)
    commits_seen = []
    original = network.broker.handlers["CommitOffsets"]

    def spy(params, *rest, **kw):
        commits_seen.append(([(o["partition"], o["offset"]) for o in params["offsets"]], list(events)))
        return original(params, *rest, **kw)

    network.replace_handler("CommitOffsets", spy)
    b = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None,
                      on_assigned=hook("assigned", "b"), on_revoked=hook("revoked", "b"))
    reader_b = Reader(b)
    run_until(clock, network, lambda: len(a.consumers) == 2 and len(b.consumers) == 2, limit=30)
    revoked = [e for e in events if e[1] == "revoked"]
    assert len(revoked) == 1 and revoked[0][0] == "a"
    given_up = revoked[0][2]
    # The order: a's commit of the partitions it gives up (sent before its on_revoked ran), then
    # on_revoked, then b's on_assigned with exactly those partitions.
    assert commits_seen and all(e[1] != "revoked" for e in commits_seen[0][1])
    assert sorted(p for p, _ in commits_seen[0][0]) == [p for _, p in given_up]
    names = [(who, what) for who, what, _ in events]
    assert names == [("a", "assigned"), ("a", "revoked"), ("b", "assigned")]
    assert events[2][2] == given_up
    # b starts where a's processing ended: what a handed out last (not processed yet) comes again,
    # nothing is skipped.
    reader_a.running = reader_b.running = False
    run_until(clock, network, lambda: a._waiter is None and b._waiter is None)
    assert committed(network, clock, client).keys() >= {p for _, p in given_up}
    for c in (a, b):
        result_of(settle(clock, network, c.close()))


def test_the_callback_style_counts_a_batch_processed_once_the_handlers_deferred_fired(network, clock, clients):
    from twisted.internet.defer import Deferred

    client = clients()
    produce(network, clock, client, 6, partitions=1)
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=0.5, max_messages=2)
    pending = []

    def handler(batch):
        d = Deferred()
        pending.append(([m["offset"] for m in batch], d))
        return d

    done = member.run(handler)
    run_until(clock, network, lambda: len(pending) == 1)
    later = clock.seconds() + 2  # auto-commits come and go: the batch being handled is not processed yet
    run_until(clock, network, lambda: clock.seconds() >= later, step=0.1)
    assert len(pending) == 1 and committed(network, clock, client) == {}
    pending[0][1].callback(None)  # handled: run() asks for the next batch, which makes it processed
    run_until(clock, network, lambda: len(pending) == 2)
    run_until(clock, network, lambda: committed(network, clock, client) == {0: 2}, step=0.1, limit=5)
    pending[1][1].callback(None)
    run_until(clock, network, lambda: len(pending) == 3)
    run_until(clock, network, lambda: committed(network, clock, client) == {0: 4}, step=0.1, limit=5)
    assert [offsets for offsets, _ in pending] == [[0, 1], [2, 3], [4, 5]]
    close = member.close()
    pending[2][1].callback(None)
    result_of(settle(clock, network, close))
    run_until(clock, network, lambda: done.called)
    assert result_of(done) is None
    # close() took the batch being handled as processed (the application is done).
    assert committed(network, clock, client) == {0: 6}


def test_a_heartbeat_waiting_for_a_connection_that_never_comes_is_bounded_and_the_member_is_lost(
        network, clock, clients):
    from twisted.internet.defer import Deferred

    client = clients()
    produce(network, clock, client, 4)
    lost = []
    member = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=3000, auto_commit_interval=None,
                           on_lost=lost.append)
    reader = Reader(member)
    run_until(clock, network, lambda: len(member.consumers) == 4)
    # From now on connection attempts never end (nor fail), and the open connections drop.
    hanging = []
    original = network.connect

    def never(factory):
        hanging.append(Deferred())
        return hanging[-1]

    network.connect = never
    network.drop()
    cut_at = clock.seconds()
    # Each heartbeat ends within a third of the session (its own timeout, no watchdog): the member
    # notices it is cut off and gives its partitions up within the session timeout (plus a beat).
    run_until(clock, network, lambda: bool(lost), limit=10)
    assert clock.seconds() - cut_at <= 3.0 + 1.0 + 0.1
    assert lost == [[("t", 0), ("t", 1), ("t", 2), ("t", 3)]]
    network.connect = original
    for d in hanging:
        d.cancel()
    run_until(clock, network, lambda: len(member.consumers) == 4, limit=30)
    reader.running = False
    result_of(settle(clock, network, member.close()))


def test_an_auto_commit_refused_as_unknown_member_rejoins_at_once_and_carries_on(network, clock, clients):
    client = clients()
    produce(network, clock, client, 8)
    # The heartbeat comes every 3 s (the coordinator's interval), the auto-commit every 0.2 s.
    member = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=30_000, auto_commit_interval=0.2)
    reader = Reader(member)
    run_until(clock, network, lambda: len(reader.got) == 8)
    run_until(clock, network, lambda: committed(network, clock, client) == {0: 2, 1: 2, 2: 2, 3: 2}, limit=5)
    refused = []
    original = network.broker.handlers["CommitOffsets"]

    def spy(params, *rest, **kw):
        try:
            return original(params, *rest, **kw)
        except errors.UnknownMember:
            refused.append(clock.seconds())
            raise

    network.replace_handler("CommitOffsets", spy)
    # The coordinator forgets the member (as an expiry or an admin's removal would), then more comes.
    old_id = member.member_id
    result_of(settle(clock, network, client.call("LeaveGroup", {"group": "g", "member_id": old_id})))
    for i in range(8, 16):
        result_of(settle(clock, network, client.send("t", i, partition=i % 4)))
    forgotten = clock.seconds()
    run_until(clock, network, lambda: member.member_id not in (None, old_id) and len(member.consumers) == 4,
              limit=30)
    # Rejoined after the first refused commit, before the next heartbeat would have told it (before
    # the fix: 13 refused auto-commits, one every 0.2 s until then).
    assert len(refused) == 1 and clock.seconds() - forgotten < 1.0
    assert member.stats["joins"] == 2
    run_until(clock, network, lambda: committed(network, clock, client) == {0: 4, 1: 4, 2: 4, 3: 4}, limit=5)
    assert len(refused) == 1  # the new member's commits go through
    assert {v for _, _, v in reader.got} == set(range(16))
    reader.running = False
    result_of(settle(clock, network, member.close()))



def test_a_committed_offset_that_retention_deleted_resets_to_the_log_start(network, clock, clients):
    client = clients()
    result_of(settle(clock, network, client.create_topic("t", partitions=1, config={"retention_ms": 1000})))
    for i in range(3):
        result_of(settle(clock, network, client.send("t", i, partition=0)))
    # Committed at 1 (with no member in the group), then retention deletes offsets 0-2.
    result_of(settle(clock, network, client.call("CommitOffsets", {"group": "g", "offsets": [
        {"topic": "t", "partition": 0, "offset": 1}]})))
    clock.advance(5)
    for i in range(3, 5):
        result_of(settle(clock, network, client.send("t", i, partition=0)))
    network.broker.apply_retention()
    listed = result_of(settle(clock, network, client.call("ListOffsets", {"topic": "t", "partition": 0,
                                                                          "at": "earliest"})))
    assert listed["offset"] == 3
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None)
    reader = Reader(member)
    run_until(clock, network, lambda: len(reader.got) == 2)
    # From the log start: the oldest messages still stored, in order.
    assert reader.got == [(0, 3, 3), (0, 4, 4)]
    reader.running = False
    result_of(settle(clock, network, member.close()))
    assert committed(network, clock, client) == {0: 5}


def test_a_committed_offset_past_the_log_end_resets_to_the_end(network, clock, clients):
    client = clients()
    produce(network, clock, client, 3, partitions=1)
    # Committed past the end (e.g. the topic was deleted and made again after the commit).
    result_of(settle(clock, network, client.call("CommitOffsets", {"group": "g", "offsets": [
        {"topic": "t", "partition": 0, "offset": 50}]})))
    member = GroupConsumer(clients(), "g", ["t"], auto_commit_interval=None)
    reader = Reader(member)
    run_until(clock, network, lambda: ("t", 0) in member.consumers and member.positions.get(("t", 0)) == 3,
              limit=10)
    result_of(settle(clock, network, client.send("t", 3, partition=0)))
    run_until(clock, network, lambda: len(reader.got) == 1)
    # From the end: nothing stored before it is handed out again, what comes next is.
    assert reader.got == [(0, 3, 3)]
    reader.running = False
    result_of(settle(clock, network, member.close()))
    # close() committed where it read to, below the 50 past the end (refused for ever before).
    assert committed(network, clock, client) == {0: 4}


def test_a_member_resumed_past_its_session_hands_out_nothing_before_giving_its_partitions_up(
        network, clock, clients):
    client = clients()
    produce(network, clock, client, 8)
    lost = []
    a = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=2000, auto_commit_interval=None,
                      on_lost=lost.append)
    reader_a = Reader(a)
    run_until(clock, network, lambda: len(reader_a.got) == 8)
    # A freezes (as SIGSTOP would): no heartbeat, no poll.
    reader_a.running = False
    run_until(clock, network, lambda: a._waiter is None)
    a._heartbeat_timer.cancel()
    b = GroupConsumer(clients(), "g", ["t"], session_timeout_ms=2000, auto_commit_interval=None)
    reader_b = Reader(b)
    run_until(clock, network, lambda: len(b.consumers) == 4, limit=10)  # A's session expired at the coordinator
    for i in range(8, 16):
        result_of(settle(clock, network, client.send("t", i, partition=i % 4)))
    run_until(clock, network, lambda: len(reader_b.got) >= 8)
    # A resumes: it still holds its four partitions, but its session is over: nothing is handed out.
    assert len(a.consumers) == 4 and clock.seconds() >= a.session_end
    before = len(reader_a.got)
    reader_a.running = True
    reader_a._next()
    run_until(clock, network, lambda: bool(lost) or len(reader_a.got) > before, limit=5)
    assert lost == [[("t", 0), ("t", 1), ("t", 2), ("t", 3)]]
    assert len(reader_a.got) == before  # not one message of B's partitions (without the check: 4 of them)
    run_until(clock, network, lambda: a.member_id is not None and a.stats["joins"] == 2, limit=10)
    reader_a.running = reader_b.running = False
    for m in (a, b):
        result_of(settle(clock, network, m.close()))
