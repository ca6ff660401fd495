"""The protocol fuzzer, in memory: a broker behind its real protocol on StringTransports.

Every request line must get one answer (or the documented close), with its
id, a result or an error code from docs/protocol.md's Errors table (never
INTERNAL); refused requests change nothing stored, accepted writes read back
exactly.  See tests/fuzz/protofuzz/ for the generators, mutators and oracle,
and tests/fuzz/run_fuzz.py to run it longer by hand.
"""

from __future__ import annotations

import pytest
from fuzz_support import MEMORY_REQUESTS, REACHED, SEED, known_issue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protofuzz.gen import MESSAGE_FIELDS, METHODS, param_fields
from protofuzz.jsonenc import encode
from protofuzz.model import ANY, OK, refused
from protofuzz.oracle import FuzzFailure
from protofuzz.session import Line, Session
from protofuzz.setups import harness_setup

from streamlog import errors, wire


def _session(seed: int = SEED, **kwargs) -> Session:
    target, limits, config, extra = harness_setup()
    session = Session(target, seed, limits=limits, config=config, **{**extra, **kwargs})
    session.setup()
    return session


@pytest.fixture
def session():
    s = _session()
    yield s
    s.target.close()


def test_seeded_fuzz_every_answer_is_documented_and_nothing_refused_is_stored(session):
    session.run(MEMORY_REQUESTS)
    assert session.requests >= MEMORY_REQUESTS
    # in memory, time moves only when the session says: parked polls visibly pause reading
    missing = [name for name in REACHED + ["reads paused by --max-in-flight"] if not session.counts[name]]
    assert not missing, f"the run no longer reaches {missing}:\n{session.summary()}"
    assert not session.counts["INTERNAL"]


# --- hypothesis: structure drawn by the library, shrunk when it fails ------------------------

_names = sorted({f.name for m in METHODS for f in param_fields(m, wire.DEFAULT_LIMITS)}
                | {f.name for f in MESSAGE_FIELDS} | {"retention_ms", "segment_bytes", "x", ""})
_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**65)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
            | st.sampled_from(["t0", "multi", "t1", "all", "none", "leader", "earliest", "latest", "Z" * 249]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(_names) | st.text(max_size=4), inner, max_size=4),
                       max_leaves=12)
_params = st.dictionaries(st.sampled_from(_names), _values | st.integers(0, 40), max_size=6)
_envelopes = st.fixed_dictionaries(
    {"id": st.integers(min_value=-(2**64), max_value=2**65) | st.text(max_size=300) | _values,
     "method": st.sampled_from(METHODS) | st.text(max_size=12)},
    optional={"params": _params | _values, "jsonrpc": st.just("2.0")},
)
_lines = (_envelopes.map(encode)
          | st.tuples(_envelopes.map(encode), st.integers(0, 400)).map(lambda t: t[0][:t[1]])
          | st.binary(max_size=120))


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.lists(_lines, min_size=1, max_size=4))
def _hypothesis_run(session: Session, data: list[bytes]) -> None:
    session.step("hypothesis", [Line(line, ANY.because("hypothesis")) for line in data])


def test_hypothesis_drawn_requests_get_documented_answers():
    s = _session()
    try:
        _hypothesis_run(s)
        s.finish()
        assert s.requests >= 200
    finally:
        s.target.close()


# --- the oracle catches what it must (bugs planted in the broker for the test) ---------------


def _must_find(monkeypatch, plant, match: str, requests: int = 400) -> None:
    s = _session(seed=SEED + 1)
    try:
        plant(monkeypatch, s)
        with pytest.raises(FuzzFailure, match=match):
            s.run(requests)
    finally:
        monkeypatch.undo()
        s.target.close()


class _Bogus(errors.StreamlogError):
    code = "BOGUS_CODE"


def test_the_oracle_fails_an_undocumented_error_code(monkeypatch):
    def plant(mp, s):
        original = wire.parse_poll

        def parse_poll(params, limits=wire.DEFAULT_LIMITS):
            if params.get("max_messages") == 1:
                raise _Bogus("a code nobody documented")
            return original(params, limits)
        mp.setattr(wire, "parse_poll", parse_poll)
    _must_find(monkeypatch, plant, "undocumented error code 'BOGUS_CODE'")


def test_the_oracle_fails_internal(monkeypatch):
    def plant(mp, s):
        original = wire.parse_topic_only

        def parse_topic_only(params, limits=wire.DEFAULT_LIMITS):
            if params.get("topic") == "a.b-c_d":
                raise ZeroDivisionError("a bug")
            return original(params, limits)
        mp.setattr(wire, "parse_topic_only", parse_topic_only)
    _must_find(monkeypatch, plant, "INTERNAL")


def test_the_oracle_fails_a_refused_write_that_stored_something(monkeypatch):
    s = _session()
    broker = s.target.harness.broker
    send = broker.send

    def leaky(p):
        try:
            return send(p)
        except errors.UnknownPartition:
            good = [m for m in p.messages if m.get("partition") is None]
            send(wire.SendParams(p.topic, good, "leader"))  # half a batch stored: not atomic
            raise
    monkeypatch.setattr(broker, "send", leaky)
    line = wire.encode_request(s.gen.new_id(), "SendBatch", {
        "topic": "t0", "messages": [{"value": "stored"}, {"value": "bad", "partition": 1}]})[:-1]
    try:
        with pytest.raises(FuzzFailure, match="t0/0: offsets"):
            s.step("planted", [Line(line, refused("UNKNOWN_PARTITION", stateless=False))])
    finally:
        s.target.close()


def test_the_oracle_fails_a_lost_acks_none_write(monkeypatch):
    def plant(mp, s):
        broker = s.target.harness.broker
        send = broker.send
        mp.setattr(broker, "send", lambda p: None if p.acks == "none" else send(p))
    _must_find(monkeypatch, plant, "acks=none .* not stored")


def test_the_oracle_fails_an_answer_with_the_wrong_id(monkeypatch):
    def plant(mp, s):
        original = wire.encode_error
        mp.setattr(wire, "encode_error", lambda rid, e: original(
            str(rid) if isinstance(rid, int) and e.code == "INVALID_TOPIC" else rid, e))
    _must_find(monkeypatch, plant, "matches no request|answer id")


def test_the_oracle_fails_a_value_stored_differently(monkeypatch):
    def plant(mp, s):
        original = wire.encode_records

        def lossy(base, ts, messages, plain=False):
            return original(base, ts, [{**m, "value": m["value"] / 1 if type(m["value"]) is int and
                                        abs(m["value"]) < 2**53 else m["value"]} for m in messages], plain)
        mp.setattr(wire, "encode_records", lossy)
    _must_find(monkeypatch, plant, "stored|Poll returned")


def test_the_oracle_reads_the_codes_from_the_doc(tmp_path):
    """A code the server sends but the doc's table lacks fails the run."""
    from protofuzz.docs import PROTOCOL_MD
    text = PROTOCOL_MD.read_text()
    doc = tmp_path / "protocol.md"
    doc.write_text("\n".join(line for line in text.splitlines() if not line.startswith("| `INVALID_TOPIC`")))
    target, limits, config, _ = harness_setup()
    s = Session(target, SEED, limits=limits, config=config, doc=doc)
    try:
        s.setup()
        with pytest.raises(FuzzFailure, match="undocumented error code 'INVALID_TOPIC'"):
            s.step("doc", [Line(b'{"id":1,"method":"Poll","params":{"topic":"bad name","offset":0}}',
                                refused("INVALID_TOPIC"))])
    finally:
        target.close()


# --- the known issues (KNOWN_ISSUES), as the fuzzer's own repros with the tolerance off -------


def _strict_session() -> Session:
    return _session(known={})


@known_issue("partition-beyond-max")
def test_a_partition_past_max_partitions_is_unknown_partition():
    s = _strict_session()
    try:
        for method, extra in (("Poll", {"offset": 0}), ("ListOffsets", {}), ("Send", {"value": 1})):
            params = {"topic": "t0", "partition": s.limits.max_partitions, **extra}
            line = wire.encode_request(s.gen.new_id(), method, params)[:-1]
            s.step("known", [Line(line, refused("UNKNOWN_PARTITION", stateless=False))])
    finally:
        s.target.close()


@known_issue("refused-send-creates-topic")
def test_a_refused_send_does_not_create_its_topic():
    s = _strict_session()
    try:
        line = wire.encode_request(s.gen.new_id(), "Send", {"topic": "fresh", "partition": 7, "value": 1})[:-1]
        s.step("known", [Line(line, refused("UNKNOWN_PARTITION", stateless=False))])
    finally:
        s.target.close()


@known_issue("config-falsy")
@pytest.mark.parametrize("config", [b"0", b'""', b"[]", b"false"])
def test_createtopic_refuses_a_config_that_is_not_an_object(config):
    s = _strict_session()
    try:
        line = b'{"id":%d,"method":"CreateTopic","params":{"topic":"fresh","config":%s}}' % (s.gen.new_id(), config)
        s.step("known", [Line(line, refused("INVALID_PARAMS", known="config-falsy"))])
    finally:
        s.target.close()


def test_a_valid_request_is_accepted_by_the_oracle():
    """The strict session accepts plain valid traffic (so the tests above fail for their bug only)."""
    s = _strict_session()
    try:
        for method in METHODS:
            req = s.gen.request(method)
            s.step("valid", [Line(req.line(), OK if req.expect.outcome == "ok" else req.expect)])
        s.finish()
    finally:
        s.target.close()


def test_the_oracle_fails_requests_lost_while_reading_is_paused(monkeypatch):
    """Parked polls past --max-in-flight pause reading; a server that dropped what
    arrived meanwhile (instead of reading it later) must fail the run."""
    from streamlog.protocol import BrokerProtocol

    s = _session()
    original = BrokerProtocol.dataReceived
    monkeypatch.setattr(BrokerProtocol, "dataReceived",
                        lambda self, data: None if self.paused else original(self, data))
    try:
        with pytest.raises(FuzzFailure, match="no answer|sentinel"):
            for _ in range(20):
                s.step("parked", s.parked())
    finally:
        s.target.close()
