"""The node's HTTP listener (C{--http-listen}): metrics, health, and what others mount on it.

One L{streamlog.http.root.HttpRoot} per node, served by Twisted Web on the
node's own reactor (L{streamlog.http.site}).  Each part mounts its own child
on it: C{/metrics} (L{streamlog.http.metrics}), C{/health} and C{/ready}
(L{streamlog.http.health}), and the web console its C{/} and C{/api/}.
Nothing here is on the data path: a scrape reads the node's state when it
comes, and the broker never waits for HTTP.
"""
