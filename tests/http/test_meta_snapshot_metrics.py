"""The metadata group's compaction in /metrics: snapshots written, installs received from the
controller, the newest snapshot's index and size.  Three ClusterNodes on a Clock (ClusterHarness),
snapshots every few entries, scraped through the node's own registry."""

from __future__ import annotations

from metrics_support import Scrape

from streamlog.cluster.metadata import METADATA_GROUP
from streamlog.testing import ClusterHarness

INTERVAL = 4


def scrape(c, i):
    return Scrape(c.brokers[i], c.factories[i], cluster=c.nodes[i], node_id=i)


def test_snapshots_written_and_installed_are_counted_with_the_newest_ones_index_and_size():
    c = ClusterHarness(3, metadata_snapshot_entries=INTERVAL)
    try:
        c.run_until_formed()
        fresh = scrape(c, 2)
        c.create_topics(*(f"t{i}" for i in range(12)))
        c.run_until(lambda: all(n.compactor.stats["written"] >= 3 for n in c.nodes.values()))
        node = c.nodes[2]
        s = scrape(c, 2)
        newest = node.compactor.index
        held = c.storages[2].snapshot_store(METADATA_GROUP)
        assert newest > 0 and held.listing()[0] == newest
        assert s.value("streamlog_meta_snapshots_written_total") == node.compactor.stats["written"] >= 3
        assert s.value("streamlog_meta_snapshot_index") == newest
        assert s.value("streamlog_meta_snapshot_bytes") == len(held.read(newest)) > 0
        assert s.value("streamlog_meta_snapshot_installs_total") == 0
        assert s.value("streamlog_meta_snapshots_refused_total") == 0
        assert fresh.value("streamlog_meta_snapshots_written_total") >= 3  # read at scrape time, not when built

        c.kill(3)  # away while the controller's log moves past what it holds: it must install a snapshot
        c.create_topics(*(f"while-away-{k}" for k in range(3 * INTERVAL)))
        back = c.start(3)
        c.run_until(lambda: back.compactor.stats["installed"] >= 1
                    and f"while-away-{3 * INTERVAL - 1}" in (back.state.topics if back.state else {}))
        s3 = scrape(c, 3)
        assert s3.value("streamlog_meta_snapshot_installs_total") == back.compactor.stats["installed"] >= 1
        assert s3.value("streamlog_meta_snapshot_index") == back.compactor.index >= newest
    finally:
        c.stop()


def test_a_node_alone_has_no_metadata_snapshot_series():
    from streamlog.testing import BrokerHarness

    h = BrokerHarness()
    try:
        assert Scrape(h.broker, h.factory).value("streamlog_meta_snapshot_index") is None
    finally:
        h.stop()
