"""streamlog-server options that are more than a number: the listen backlog."""

from __future__ import annotations

import pytest
from twisted.internet import endpoints, reactor

from streamlog.tap.server import DEFAULT_LISTEN, Options, with_listen_backlog


@pytest.mark.parametrize("description,expected", [
    ("tcp:7070:interface=127.0.0.1", "tcp:7070:interface=127.0.0.1:backlog=1024"),
    ("tcp:0", "tcp:0:backlog=1024"),
    ("TCP6:7070:interface=\\:\\:1", "TCP6:7070:interface=\\:\\:1:backlog=1024"),
    ("unix:/tmp/s.sock", "unix:/tmp/s.sock:backlog=1024"),
    ("ssl:7443:privateKey=k.pem", "ssl:7443:privateKey=k.pem:backlog=1024"),
    # The description's own backlog wins; types without one are left alone.
    ("tcp:7070:backlog=10:interface=127.0.0.1", "tcp:7070:backlog=10:interface=127.0.0.1"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    # An escaped colon is part of a value, not a field separator.
    ("unix:/tmp/back\\:log=1", "unix:/tmp/back\\:log=1:backlog=1024"),
])
def test_the_backlog_is_added_unless_the_endpoint_sets_one(description, expected):
    assert with_listen_backlog(description, 1024) == expected


def test_the_rewritten_default_endpoint_parses_with_its_backlog():
    endpoint = endpoints.serverFromString(reactor, with_listen_backlog(DEFAULT_LISTEN, 777))
    assert endpoint._backlog == 777 and endpoint._interface == "127.0.0.1"


def test_the_backlog_and_per_address_cap_are_server_options():
    options = Options()
    options.parseOptions(["--listen-backlog", "4096", "--max-connections-per-address", "8"])
    limits = options.limits()
    assert limits.listen_backlog == 4096 and limits.max_connections_per_address == 8
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.limits().listen_backlog == 1024 and defaults.limits().max_connections_per_address == 256


PEERS = "1=127.0.0.1:7171,2=127.0.0.1:7172,3=127.0.0.1:7173"


def test_the_cluster_options_become_the_node_config():
    options = Options()
    options.parseOptions(["--node-id", "2", "--peers", PEERS, "--peer-listen", "tcp:7172:interface=127.0.0.1",
                          "--advertise", "10.0.0.2:7070", "--election-timeout-ms", "800", "--heartbeat-ms", "80",
                          "--replication-factor", "2"])
    config = options.node_config()
    assert config.node_id == 2 and config.peers == {1: "127.0.0.1:7171", 2: "127.0.0.1:7172", 3: "127.0.0.1:7173"}
    assert config.peer_listen == "tcp:7172:interface=127.0.0.1" and config.advertise == "10.0.0.2:7070"
    assert (config.election_timeout_ms, config.heartbeat_ms, config.replication_factor) == (800, 80, 2)
    alone = Options()
    alone.parseOptions([])
    assert not alone.node_config().clustered and alone.node_config().node_id == 1


def test_the_peer_wire_limits_are_server_options_that_reach_the_transport():
    from streamlog.raft.transport import TransportLimits
    from streamlog.testing import ClusterHarness

    options = Options()
    options.parseOptions(["--peer-max-header-bytes", "65536", "--peer-max-body-bytes", "2097152",
                          "--peer-bulk-budget-bytes", "1048576", "--peer-handshake-timeout", "2.5",
                          "--peer-control-line-bytes", "16384", "--peer-max-unread-bytes", "4194304",
                          "--peer-connect-timeout", "0.5"])
    limits = TransportLimits(65536, 2097152, 1048576, 2.5, 16384, 4194304, connect_timeout=0.5)
    assert options.node_config().peer_limits == limits
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.node_config().peer_limits == TransportLimits()
    c = ClusterHarness(3, peer_limits=limits)
    try:
        assert all(n.raft.transport.limits == limits for n in c.nodes.values())
    finally:
        c.stop()


@pytest.mark.parametrize("args,says", [
    (["--peer-max-body-bytes", "0"], "--peer-max-body-bytes must be positive"),
    (["--peer-handshake-timeout", "-1"], "--peer-handshake-timeout must be positive"),
    (["--peer-handshake-timeout", "inf"], "--peer-handshake-timeout must be positive and finite, not inf"),
    (["--peer-connect-timeout", "0"], "--peer-connect-timeout must be positive and finite, not 0"),
    (["--peer-connect-timeout", "-2"], "--peer-connect-timeout must be positive and finite, not -2"),
    (["--peer-connect-timeout", "inf"], "--peer-connect-timeout must be positive and finite, not inf"),
    (["--peer-connect-timeout", "nan"], "--peer-connect-timeout must be positive and finite, not nan"),
    (["--peers", PEERS], "--peers needs --peer-listen"),
    (["--node-id", "4", "--peers", PEERS, "--peer-listen", "tcp:7174"], "must include this node"),
    (["--peers", "1=127.0.0.1", "--peer-listen", "tcp:7171"], "is not ID=HOST:PORT"),
    (["--peers", "1=a:1,1=b:2", "--peer-listen", "tcp:1"], "names node 1 twice"),
    (["--peers", PEERS, "--peer-listen", "tcp:7999"], "is not node 1's port"),
    (["--peer-listen", "tcp:7171"], "--peer-listen needs --peers"),
    (["--peers", PEERS, "--peer-listen", "tcp:7171", "--replication-factor", "4"], "--replication-factor must be"),
    (["--node-id", "0"], "--node-id must be a positive integer"),
    (["--heartbeat-ms", "400"], "at most half of --election-timeout-ms"),
    (["--advertise", "nohost"], "is not HOST:PORT"),
])
def test_a_wrong_cluster_option_is_refused_with_a_message_naming_it(args, says):
    from twisted.python import usage

    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(args)
    assert says in str(refused.value)


def test_the_producer_state_options_reach_every_partitions_table(clock):
    from streamlog.broker.service import NodeConfig
    from streamlog.idempotence.table import ProducerStateConfig
    from streamlog.testing import BrokerHarness

    options = Options()
    options.parseOptions(["--producer-state-batches", "12", "--max-producers-per-partition", "50",
                          "--producer-id-expiry-ms", "600000", "--producer-evict-min-idle-ms", "200000",
                          "--producer-state-undo-limit", "77", "--producer-snapshot-interval-batches", "500",
                          "--storage", "memory"])
    wanted = ProducerStateConfig(window=12, max_producers=50, expiry_ms=600_000, evict_min_idle_ms=200_000,
                                 undo_limit=77, snapshot_interval_batches=500)
    config = options.node_config()
    assert config.producer_state == wanted and config.broker_config().producer_state == wanted
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.node_config().producer_state == ProducerStateConfig() == NodeConfig().producer_state
    h = BrokerHarness(config=config.broker_config(), clock=clock)
    try:
        h.connect().call("CreateTopic", {"topic": "t", "partitions": 2})
        assert all(p.producers.config == wanted for p in h.broker.topics["t"].partitions)
    finally:
        h.stop()


@pytest.mark.parametrize("args,says", [
    (["--producer-state-batches", "7"], "window 7 is below the 8 batches the streamlog Producer may have "
                                        "unacknowledged per partition"),
    (["--producer-state-batches", "65"], "window must be in [8, 64]"),
    (["--max-producers-per-partition", "0"], "max_producers must be at least 1"),
    (["--producer-id-expiry-ms", "0"], "expiry_ms must be positive"),
    (["--producer-evict-min-idle-ms", "100", "--producer-id-expiry-ms", "50"], "cannot exceed expiry_ms"),
    (["--producer-state-undo-limit", "-1"], "undo_limit cannot be negative"),
    (["--producer-snapshot-interval-batches", "-1"], "snapshot_interval_batches cannot be negative"),
])
def test_a_wrong_producer_state_option_is_refused(args, says):
    from twisted.python import usage

    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(args)
    assert says in str(refused.value) and "--producer-state-batches" in str(refused.value)


@pytest.mark.parametrize("args,says", [
    (["--producer-id-expiry-ms", "60000", "--producer-evict-min-idle-ms", "30000"],
     "--producer-id-expiry-ms (60000) must be more than --client-delivery-timeout-ms (120000): a partition "
     "that forgets a producer while it may still retry a batch"),
    (["--producer-evict-min-idle-ms", "120000"],
     "--producer-evict-min-idle-ms (120000) must be more than --client-delivery-timeout-ms (120000)"),
    (["--client-delivery-timeout-ms", "400000"],
     "--producer-evict-min-idle-ms (300000) must be more than --client-delivery-timeout-ms (400000)"),
    (["--client-delivery-timeout-ms", "0"], "--client-delivery-timeout-ms must be positive"),
])
def test_an_expiry_a_retrying_producer_could_outlive_is_refused(args, says):
    from twisted.python import usage

    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(args)
    assert says in str(refused.value)


def test_producers_with_short_delivery_timeouts_allow_a_short_expiry():
    from streamlog.client.producer import DEFAULT_DELIVERY_TIMEOUT
    from streamlog.idempotence.table import DEFAULT_CLIENT_DELIVERY_TIMEOUT_MS

    assert DEFAULT_CLIENT_DELIVERY_TIMEOUT_MS == DEFAULT_DELIVERY_TIMEOUT * 1000  # the client's own default
    options = Options()
    options.parseOptions(["--client-delivery-timeout-ms", "10000", "--producer-id-expiry-ms", "60000",
                          "--producer-evict-min-idle-ms", "30000", "--storage", "memory"])
    assert options.node_config().producer_state.expiry_ms == 60_000
