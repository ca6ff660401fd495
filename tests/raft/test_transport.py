"""The peer transport on in-memory transports: framing, the hello, hostile input (each case
closes only its own connection), priorities and budgets, raw frames, liveness, forwarding."""

import orjson
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, RequestVote, to_dict
from streamlog.raft.transport import PeerTransport, StoredFrameCodec, TransportLimits
from streamlog.storage import codec
from streamlog.storage.base import BatchType, RecordBatch


class FakeHost:
    def __init__(self):
        self.delivered = []
        self.connected = []
        self.lost = []
        self.back = []
        self.leadership_seen = []
        self.mismatches = []

    def peer_connected(self, node, hello):
        self.connected.append((node, hello))

    def peer_lost(self, node):
        self.lost.append(node)

    def peer_back(self, node):
        self.back.append(node)

    def deliver(self, node, group, to, frm, msg):
        self.delivered.append((node, group, to, frm, msg))

    def leadership(self, node, full, groups):
        self.leadership_seen.append((node, full, groups))

    def forwarded(self, node, request):
        return {"echo": request, "from": node}

    def cluster_mismatch(self, node, theirs):
        self.mismatches.append((node, theirs))


def line(obj):
    return orjson.dumps(obj) + b"\n"


def hello(node="b", cluster="c1", v=1, inc="i2"):
    return {"t": "hello", "v": v, "cluster": cluster, "node": node, "inc": inc}


def make(node="a", peers=("a", "b", "c"), cluster="c1", limits=None):
    clock = Clock()
    host = FakeHost()
    pt = PeerTransport(node, peers, host, clock, incarnation="i1", cluster_id=cluster, limits=limits)
    return clock, host, pt


def accepted(pt, peer="b", **kw):
    """A connection the listener accepted, after a valid hello from `peer`."""
    proto = pt.factory().buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    assert t.value() == b""  # a connecting client gets nothing before its hello
    proto.dataReceived(line(hello(peer, **kw)))
    return proto, t


def test_the_listener_answers_a_valid_hello_and_only_then():
    clock, host, pt = make()
    proto, t = accepted(pt)
    assert orjson.loads(t.value()) == {"t": "hello", "v": 1, "cluster": "c1", "node": "a", "inc": "i1"}
    assert [n for n, _ in host.connected] == ["b"] and host.connected[0][1].incarnation == "i2"
    assert set(pt.connections) == {"b"}
    clock.advance(10)
    assert not t.disconnecting  # the handshake timer is gone


def test_a_silent_client_gets_nothing_and_is_closed_after_the_handshake_timeout():
    clock, host, pt = make(limits=TransportLimits(handshake_timeout=2.0))
    proto = pt.factory().buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    clock.advance(1.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting and t.value() == b"" and pt.stats["handshake_timeouts"] == 1


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a web client
    line({"t": "raft", "m": []}),  # a message before the hello
    line(hello(node="mallory")),  # an unknown node
    line(hello(node="a")),  # ourselves
    line(hello(v=99)),  # another protocol version
    line(hello(inc=5)),  # malformed
    b"x" * 200,  # no newline, over the header limit
])
def test_a_bad_first_message_closes_the_connection_and_gets_nothing(data):
    clock, host, pt = make(limits=TransportLimits(max_header_bytes=100))
    proto = pt.factory().buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(data)
    assert t.disconnecting and t.value() == b"" and pt.connections == {} and host.connected == []


def test_a_mismatched_cluster_id_is_refused_both_ways_and_reported():
    clock, host, pt = make()
    proto = pt.factory().buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(line(hello(cluster="other")))
    assert t.disconnecting and t.value() == b"" and host.mismatches == [("b", "other")]
    # The dialing side refuses the listener's answer just the same.
    clock, host, pt = make()
    proto = pt.factory(expect="b").buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    assert orjson.loads(t.value())["t"] == "hello"  # the dialer speaks first
    proto.dataReceived(line(hello(cluster="other")))
    assert t.disconnecting and host.mismatches == [("b", "other")] and pt.connections == {}
    assert pt.stats["cluster_mismatches"] == 1


def test_a_node_without_a_cluster_id_accepts_any_and_learns_the_peers():
    clock, host, pt = make(cluster=None)
    proto, t = accepted(pt, cluster="c9")
    assert host.connected[0][1].cluster_id == "c9" and not t.disconnecting


def test_a_dialer_refuses_an_answer_from_another_node_than_it_dialed():
    clock, host, pt = make()
    proto = pt.factory(expect="b").buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(line(hello(node="c")))
    assert t.disconnecting and pt.connections == {}


def frames(entries):
    c = StoredFrameCodec()
    parts = [c.encode(e) for e in entries]
    return [b"".join(p) for p in parts]


def ae_message(entries, prev=0, frm="b", to="a", group="g", lengths=None, body=None):
    fs = frames(entries)
    body = b"".join(fs) if body is None else body
    fields = {"term": 1, "leader_id": frm, "prev_index": prev, "prev_term": 0, "commit": 0}
    header = {"t": "ae", "g": group, "to": to, "fr": frm, "m": fields,
              "f": lengths if lengths is not None else [len(f) for f in fs], "len": len(body)}
    return line(header) + body


def two_peers(**kw):
    clock, host, pt = make(**kw)
    b, tb = accepted(pt, "b")
    c, tc = accepted(pt, "c")
    return clock, host, pt, (b, tb), (c, tc)


HOSTILE = {
    "garbage": b"{not json\n",
    "not an object": line([1, 2]),
    "unknown type": line({"t": "nope"}),
    "second hello": line(hello("b")),
    "raft item malformed": line({"t": "raft", "m": [["g", "a"]]}),
    "raft message malformed": line({"t": "raft", "m": [["g", "a", "b", {"type": "request_vote", "term": "x"}]]}),
    "raft message type a list": line({"t": "raft", "m": [["g", "a", "b", {"type": ["append_entries"]}]]}),
    "from another node's member": line({"t": "raft", "m": [["g", "a", "c", to_dict(RequestVote(1, "c", 0, 0))]]}),
    "entries in a control message": line({"t": "raft", "m": [["g", "a", "b", to_dict(
        AppendEntries(1, "b", 0, 0, (Entry(1, 1, b"x"),), 0))]]}),
    "negative length": line({"t": "hb", "len": -1}),
    "boolean length": line({"t": "hb", "len": True}),
    "body over the limit": line({"t": "hb", "len": 10**9}),
    "header over the limit": b"{" + b" " * 5000,
    "frame lengths do not add up": ae_message([Entry(1, 1, b"x")], lengths=[3]),
    "zero frame length": ae_message([Entry(1, 1, b"x")], lengths=[0]),
    "bad CRC": ae_message([Entry(1, 1, b"xy")], body=frames([Entry(1, 1, b"xy")])[0][:-1] + b"z"),
    "frame out of sequence": ae_message([Entry(2, 1, b"x")], prev=0),
    "not a frame": ae_message([Entry(1, 1, b"x")], body=b"y" * len(frames([Entry(1, 1, b"x")])[0])),
    "lead malformed": line({"t": "lead", "groups": {"g": [1]}}),
    "fwd without id": line({"t": "fwd", "req": {}}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_message_closes_only_its_connection(case):
    clock, host, pt, (b, tb), (c, tc) = two_peers(limits=TransportLimits(max_header_bytes=4096, max_body_bytes=1 << 20))
    b.dataReceived(HOSTILE[case])
    assert tb.disconnecting and pt.stats["bad_messages"] == 1
    assert host.delivered == []
    # The other peer is unaffected and keeps delivering.
    c.dataReceived(line({"t": "raft", "m": [["g", "a", "c", to_dict(RequestVote(1, "c", 0, 0))]]}))
    assert not tc.disconnecting and host.delivered == [("c", "g", "a", "c", RequestVote(1, "c", 0, 0))]


def test_a_message_split_across_reads_and_many_in_one_read():
    clock, host, pt, (b, tb), _ = two_peers()
    one = line({"t": "raft", "m": [["g", "a", "b", to_dict(RequestVote(1, "b", 0, 0))]]})
    ae = ae_message([Entry(1, 1, b"x"), Entry(2, 1, b"", ("a", "b")), Entry(3, 1, b"")])
    data = one * 500 + ae + one
    for i in range(0, len(data), 7):
        b.dataReceived(data[i:i + 7])
    assert len(host.delivered) == 502 and not tb.disconnecting
    msg = host.delivered[500][4]
    assert msg.entries == (Entry(1, 1, b"x"), Entry(2, 1, b"", ("a", "b")), Entry(3, 1, b""))


@pytest.mark.parametrize("read", [1, 5, 64, 1000, 10**9])
def test_bodies_are_the_same_however_the_stream_is_cut_and_keep_no_view_of_a_read(read):
    # Bodies are views of the read that carries them (no copy) or joined from several reads;
    # what reaches the host must be the same either way, and hold bytes of its own.
    clock, host, pt, (b, tb), _ = two_peers()
    vote = line({"t": "raft", "m": [["g", "a", "b", to_dict(RequestVote(1, "b", 0, 0))]]})
    big = Entry(1, 1, b"y" * 3000)
    snap = InstallSnapshot(1, "b", 5, 1, b"state" * 100, ("a", "b"))
    fields = to_dict(snap)
    del fields["type"], fields["data"]
    snap_msg = line({"t": "snap", "g": "g", "to": "a", "fr": "b", "m": fields, "len": len(snap.data)}) + snap.data
    data = vote + ae_message([big]) + vote + snap_msg + ae_message([Entry(2, 1, b"z"), Entry(3, 1, b"w")], prev=1) + vote
    for i in range(0, len(data), read):
        b.dataReceived(data[i:i + read])
    assert not tb.disconnecting
    kinds = [type(d[4]).__name__ for d in host.delivered]
    assert kinds == ["RequestVote", "AppendEntries", "RequestVote", "InstallSnapshot", "AppendEntries", "RequestVote"]
    assert host.delivered[1][4].entries == (big,) and host.delivered[4][4].entries == (Entry(2, 1, b"z"), Entry(3, 1, b"w"))
    assert host.delivered[3][4].data == snap.data
    assert type(host.delivered[3][4].data) is bytes and all(type(e.data) is bytes for e in host.delivered[1][4].entries)


def test_record_batches_travel_as_their_stored_frame_and_arrive_with_it():
    batch = codec.stamp(RecordBatch(0, 2, 1, 5, 6, b'{"a":1}\n{"b":2}'), 1, 1)
    c = StoredFrameCodec()
    head, payload = c.encode(Entry(1, 1, batch))
    assert head is batch.header and payload is batch.payload  # no re-encoding, no copy
    clock, host, pt, (b, tb), _ = two_peers()
    fields = {"term": 1, "leader_id": "b", "prev_index": 0, "prev_term": 0, "commit": 0}
    b.dataReceived(line({"t": "ae", "g": "g", "to": "a", "fr": "b", "m": fields,
                         "f": [len(head) + len(payload)], "len": len(head) + len(payload)}) + head + payload)
    (entry,) = host.delivered[0][4].entries
    assert entry.data == batch and entry.data.header == batch.header and entry.data.type == BatchType.RECORDS


def connected_pair(limits=None):
    """Two transports over iosim: a dials b."""
    clock = Clock()
    ha, hb = FakeHost(), FakeHost()
    a = PeerTransport("a", ["a", "b"], ha, clock, incarnation="ia", cluster_id="c1", limits=limits)
    b = PeerTransport("b", ["a", "b"], hb, clock, incarnation="ib", cluster_id="c1", limits=limits)
    server, client, pump = iosim.connectedServerAndClient(
        lambda: b.factory().buildProtocol(None), lambda: a.factory(expect="b").buildProtocol(None))
    pump.flush()
    return clock, (a, ha), (b, hb), pump


def test_control_messages_of_many_groups_in_one_turn_are_one_message():
    clock, (a, ha), (b, hb), pump = connected_pair()
    conn = a.connections["b"]
    writes = []
    real_write = conn.transport.write
    conn.transport.write = lambda data: (writes.append(data), real_write(data))
    for g in range(1000):
        a.send(f"g{g}", "b", "a", AppendEntries(3, "a", 10, 3, (), 10))
    clock.advance(0)
    assert len(writes) == 1 and writes[0].count(b"\n") == writes[0].count(b'"t":"raft"') < 20
    pump.flush()
    assert len(hb.delivered) == 1000 and hb.delivered[999][1] == "g999"


def test_control_goes_ahead_of_queued_bulk_and_bulk_past_the_budget_is_dropped():
    clock, (a, ha), (b, hb), pump = connected_pair(limits=TransportLimits(bulk_budget_bytes=2000))
    conn = a.connections["b"]
    conn.pauseProducing()  # the socket buffer is full
    big = AppendEntries(1, "a", 0, 0, (Entry(1, 1, b"x" * 900),), 0)
    assert a.send("g", "b", "a", big)
    assert a.send("g", "b", "a", attrs_evolve_entries(big, 2))
    assert not a.send("g", "b", "a", attrs_evolve_entries(big, 3))  # past 2,000 bytes queued
    assert a.stats["bulk_dropped"] == 1
    a.send("g", "b", "a", AppendEntriesResponse(1, True, match_index=5))  # control: never dropped
    clock.advance(0)
    pump.flush()
    assert [type(m[4]) for m in hb.delivered] == [AppendEntriesResponse]  # ahead of the bulk
    conn.resumeProducing()
    clock.advance(0)
    pump.flush()
    assert [type(m[4]) for m in hb.delivered] == [AppendEntriesResponse, AppendEntries, AppendEntries]
    assert a.send("g", "b", "a", attrs_evolve_entries(big, 3))  # room again


def attrs_evolve_entries(msg, index):
    import attrs

    return attrs.evolve(msg, prev_index=index - 1, entries=(Entry(index, 1, b"x" * 900),))


def test_install_snapshot_data_travels_raw():
    clock, (a, ha), (b, hb), pump = connected_pair()
    a.send("g", "b", "a", InstallSnapshot(2, "a", 40, 2, b"\x00\xffstate", ("a", "b")))
    clock.advance(0)
    pump.flush()
    assert hb.delivered[0][4] == InstallSnapshot(2, "a", 40, 2, b"\x00\xffstate", ("a", "b"))


def test_node_heartbeats_keep_a_peer_alive_and_their_absence_is_reported():
    clock, (a, ha), (b, hb), pump = connected_pair()
    for _ in range(20):
        clock.advance(0.05)
        assert a.tick(clock.seconds()) == [] and b.tick(clock.seconds()) == []
        pump.flush()
    assert a.is_alive("b")
    for _ in range(11):  # b stops (SIGSTOP): a hears nothing
        clock.advance(0.05)
        lost = a.tick(clock.seconds())
    assert lost == ["b"] or not a.is_alive("b")
    assert not a.is_alive("b")


def test_node_heartbeats_carry_what_the_node_says_of_its_metadata_and_it_goes_with_the_connection():
    clock, (a, ha), (b, hb), pump = connected_pair()
    said = [None]
    b.beat_metadata = lambda: said[0]
    for value in (None, 17, 18):
        said[0] = value
        clock.advance(0.05)
        a.tick(clock.seconds())
        b.tick(clock.seconds())
        clock.advance(0)  # control messages of a turn go out together
        pump.flush()
        assert a.peer_metadata == {"b": value}
    assert b.peer_metadata == {}  # a sets nothing: its heartbeats carry no meta field
    a.connections["b"].transport.loseConnection()
    pump.flush()
    assert a.peer_metadata == {}


def test_forwarded_requests_get_answers_and_fail_when_the_connection_drops():
    clock, (a, ha), (b, hb), pump = connected_pair()
    got = []
    a.forward("b", {"op": "create"}).addBoth(got.append)
    clock.advance(0)
    pump.flush()
    clock.advance(0)
    pump.flush()
    assert got == [{"echo": {"op": "create"}, "from": "a"}]
    failed = []
    a.forward("b", {"op": "x"}).addErrback(lambda f: failed.append(f.value))
    a.connections["b"].transport.loseConnection()
    pump.flush()
    assert isinstance(failed[0], ConnectionError) and ha.lost == ["b"]
    assert not clock.getDelayedCalls() or all(not c.active() for c in clock.getDelayedCalls())


def test_leadership_announcements_in_full_and_as_deltas():
    clock, (a, ha), (b, hb), pump = connected_pair()
    a.announce({"g1": [3, ["a.ia", "b.ib"]]}, full=True, to="b")
    a.announce({"g1": None, "g2": [1, ["a.ia"]]})
    clock.advance(0)
    pump.flush()
    assert hb.leadership_seen == [("a", True, {"g1": [3, ["a.ia", "b.ib"]]}), ("a", False, {"g1": None, "g2": [1, ["a.ia"]]})]


def test_a_peer_that_reads_nothing_is_disconnected_once_control_piles_up():
    clock, (a, ha), (b, hb), pump = connected_pair(limits=TransportLimits(max_unread_bytes=10_000))
    conn = a.connections["b"]
    conn.pauseProducing()  # b stopped reading: the socket buffer stays full
    for i in range(200):
        a.send(f"g{i}", "b", "a", AppendEntriesResponse(1, True, match_index=i))
        clock.advance(0)
        if conn._closing:
            break
    assert conn._closing and a.stats["unread_closes"] == 1
    pump.flush()
    assert a.connections == {} and ha.lost == ["b"]


def test_the_hello_says_whether_the_node_fsyncs_before_acknowledging():
    clock, host, pt = make()
    pt.fsyncs = False
    proto = pt.factory().buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(line({**hello("b"), "fsync": True}))
    assert orjson.loads(t.value())["fsync"] is False
    assert host.connected[0][1].fsyncs is True
    _, _, pt2 = make()
    proto, _ = accepted(pt2)  # a hello without it: not known
    assert proto.hello.fsyncs is None
    _, host3, pt3 = make()
    bad = pt3.factory().buildProtocol(None)
    t3 = StringTransport()
    bad.makeConnection(t3)
    bad.dataReceived(line({**hello("b"), "fsync": "yes"}))
    assert t3.disconnecting and host3.connected == []  # malformed: refused


def test_peer_factories_are_quiet_so_reconnect_attempts_do_not_flood_the_log():
    # A dialer's factory starts and stops at every attempt (every 50 ms to 2 s while a peer is
    # down); a noisy one logs "Starting factory" / "Stopping factory" each time.
    _, _, transport = make()
    assert transport.factory().noisy is False
    assert transport.factory(expect="b").noisy is False


class TCPLikeTransport(StringTransport):
    """A StringTransport with the class attributes Twisted's TCP connections read and write by."""

    bufferSize = 2**16
    SEND_LIMIT = 128 * 1024


@pytest.mark.parametrize("chunk", [TransportLimits().socket_chunk_bytes, 300_000])
def test_a_tcp_peer_connection_reads_and_writes_in_chunks_of_the_limit(chunk):
    # Twisted's 64 KiB reads and 128 KiB writes cost a 500 KiB batch eight reads and four
    # writes, each a reactor turn; and its 64 KiB write buffer paused bulk after every batch.
    clock, host, pt = make(limits=TransportLimits(socket_chunk_bytes=chunk))
    proto = pt.factory().buildProtocol(None)
    t = TCPLikeTransport()
    proto.makeConnection(t)
    assert (t.bufferSize, t.SEND_LIMIT) == (chunk, chunk)
    assert (TCPLikeTransport.bufferSize, TCPLikeTransport.SEND_LIMIT) == (2**16, 128 * 1024)  # only this connection's
    plain = pt.factory().buildProtocol(None)
    s = StringTransport()
    plain.makeConnection(s)
    assert not hasattr(s, "SEND_LIMIT")  # a transport without them is left alone

