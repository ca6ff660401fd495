"""What the node counts while it works, and how a scrape turns that into Prometheus metrics.

Two halves, so that the data path never imports C{prometheus_client}:

  - L{streamlog.metrics.histogram} and L{streamlog.metrics.requests}: plain
    counters and fixed-bucket histograms the hot path bumps (a dict lookup and
    an integer add per request, per appended batch, per sync);
  - L{streamlog.metrics.collector}: a custom collector that reads those and the
    node's own state (replicas, Raft groups, groups, connections) only when
    C{/metrics} is scraped, into a C{CollectorRegistry} of the node's own (not
    the library's global one: several nodes in one test process stay apart).
"""
