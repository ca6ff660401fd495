"""docs/operations.md lists every metric a node emits, and the shipped dashboard asks only for those."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from metrics_support import Scrape
from twisted.web.resource import Resource

from streamlog.http.site import QuietSite
from streamlog.metrics.http_site import HttpSiteCollector
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.testing import BrokerHarness, ClusterHarness

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "operations.md").read_text()
#: The metric names of the table in "Metrics, health and logs": `| \`streamlog_...\` | type |`.
DOCUMENTED = dict(re.findall(r"^\| `(streamlog_[a-z_]+)` \| (gauge|counter|histogram) \|", DOCS, re.M))


def exposed_names(scrape: Scrape) -> dict[str, str]:
    """Family name as exposed (counters with _total) -> type."""
    names = {}
    for family in scrape.registry.collect():
        names[family.name + ("_total" if family.type == "counter" else "")] = family.type
    return names


@pytest.fixture
def every_family(clock):
    """A cluster node's families, and a durable node's (its committer's histograms)."""
    c = ClusterHarness(3)
    try:
        c.run_until_formed()
        names = exposed_names(Scrape(c.brokers[1], c.factories[1], cluster=c.nodes[1]))
    finally:
        c.stop()
    h = BrokerHarness(clock=clock, committer=GroupCommitter(FsyncPolicy("never"), clock=clock,
                                                            run_in_thread=lambda f, *a: None,
                                                            checkpoint_interval=None))
    try:
        names.update(exposed_names(Scrape(h.broker, h.factory)))
    finally:
        h.stop()
    site = Scrape(h.broker)  # the HTTP listener's collector, registered beside the node's
    site.registry.register(HttpSiteCollector(QuietSite(Resource(), reactor=clock)))
    names.update(exposed_names(site))
    return names


def test_every_metric_a_node_emits_is_documented_with_its_type(every_family):
    assert "streamlog_fsync_duration_seconds" in every_family
    missing = {n: t for n, t in every_family.items() if DOCUMENTED.get(n) != t}
    assert not missing, f"not in docs/operations.md's table (or with another type): {missing}"
    gone = set(DOCUMENTED) - set(every_family)
    assert not gone, f"documented but not emitted: {gone}"


def test_the_grafana_dashboard_and_prometheus_config_use_only_documented_metrics():
    dashboard = json.loads((ROOT / "contrib" / "grafana" / "streamlog-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"streamlog_[a-z_]+", e)}
    assert used and used <= set(DOCUMENTED), used - set(DOCUMENTED)
    config = (ROOT / "contrib" / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in config and '"127.0.0.1:7371"' in config and '"127.0.0.1:9644"' in config
