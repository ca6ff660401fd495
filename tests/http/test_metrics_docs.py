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


def dashboard_series() -> set[str]:
    """Every streamlog series the shipped dashboard's queries (panels and variables) name."""
    dashboard = json.loads((ROOT / "contrib" / "grafana" / "streamlog-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {n for e in exprs for n in re.findall(r"streamlog_[a-z_]+", e)}


def family_of(series: str, families: dict[str, str]) -> str | None:
    """The exported family a series name belongs to (a histogram's _bucket, _sum and _count too)."""
    if series in families:
        return series
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if families.get(base) == "histogram" else None


def test_the_grafana_dashboard_and_prometheus_config_use_only_documented_metrics():
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in dashboard_series()}
    assert used and used <= set(DOCUMENTED), used - set(DOCUMENTED)
    config = (ROOT / "contrib" / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in config and '"127.0.0.1:7371"' in config and '"127.0.0.1:9644"' in config


#: Series the dashboard must show: the disk's hung syncs, the HTTP listener's limits, the
#: metadata group's compaction.
ON_THE_DASHBOARD = {
    "streamlog_fsync_oldest_in_flight_seconds", "streamlog_http_connections_refused_total",
    "streamlog_http_connections_evicted_total", "streamlog_http_request_timeouts_total",
    "streamlog_http_idle_timeouts_total", "streamlog_http_connections_open", "streamlog_http_requests_refused_total",
    "streamlog_meta_snapshots_written_total", "streamlog_meta_snapshot_installs_total",
    "streamlog_meta_snapshots_refused_total", "streamlog_meta_snapshot_index", "streamlog_meta_snapshot_bytes",
}


def test_every_series_the_grafana_dashboard_asks_for_is_one_a_node_exports(every_family):
    # Against what the collectors export, not only the docs: a name the docs and the
    # dashboard share but no node emits (a counter without _total, a renamed family) is an
    # empty panel.
    unknown = {n for n in dashboard_series() if family_of(n, every_family) is None}
    assert not unknown, f"the dashboard asks for series no node exports: {unknown}"
    assert ON_THE_DASHBOARD <= set(every_family), ON_THE_DASHBOARD - set(every_family)
    missing = ON_THE_DASHBOARD - {family_of(n, every_family) for n in dashboard_series()}
    assert not missing, f"not on the dashboard: {missing}"
