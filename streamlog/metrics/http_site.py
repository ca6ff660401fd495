"""The HTTP listener's own bounds in C{/metrics}: connections refused or closed to make room,
requests cut at C{--http-request-timeout} or refused for their body's size, idle connections closed.

Each bound (L{streamlog.http.site}) acts silently, without a log line (a
scraper or a slowloris would drown the log), so without these counters an
operator could not tell a probe that failed because every slot was taken
from one that failed because the node was down.  The site keeps plain
integers; this collector reads them at scrape time, as L{NodeCollector} does
the node's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class HttpSiteCollector(Collector):
    """The counters of one L{streamlog.http.site.QuietSite}."""

    def __init__(self, site: Any) -> None:
        self.site = site

    def collect(self) -> Iterator[Metric]:
        site = self.site
        yield GaugeMetricFamily("streamlog_http_connections_open", "HTTP connections open now.",
                                value=site.open_connections)
        refused = CounterMetricFamily("streamlog_http_connections_refused", "HTTP connections closed as soon as "
                                      "accepted: the limit (total: --http-max-connections, per_address: "
                                      "--http-max-connections-per-address) was reached and every connection in it "
                                      "was being answered.", labels=["limit"])
        refused.add_metric(["total"], site.refused_connections)
        refused.add_metric(["per_address"], site.refused_per_address)
        yield refused
        yield CounterMetricFamily("streamlog_http_connections_evicted", "HTTP connections not being answered "
                                  "(idle, or still receiving a request) closed to make room for a new one at a "
                                  "limit.", value=site.closed_idle)
        yield CounterMetricFamily("streamlog_http_request_timeouts", "HTTP requests answered 408 and their "
                                  "connection closed: not whole within --http-request-timeout of their first "
                                  "byte.", value=site.slow_requests)
        yield CounterMetricFamily("streamlog_http_idle_timeouts", "HTTP connections closed after "
                                  "--http-idle-timeout without a byte.", value=site.idle_timeouts)
        requests = CounterMetricFamily("streamlog_http_requests_refused", "HTTP requests refused and their "
                                       "connection closed, by reason (body_too_large: answered 413, the body "
                                       "over the listener's limit, --console-max-body-bytes).", labels=["reason"])
        requests.add_metric(["body_too_large"], site.bodies_refused)
        yield requests
