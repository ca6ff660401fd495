"""The web console: a read-only JSON API under C{/api/} and a small page at C{/}.

C{shape} turns the node's RPC answers into what the page shows (pure, tested
without HTTP); C{calls} asks the node's own handlers and follows one leader or
coordinator hint; C{samples} keeps the throughput and lag history for the
charts; C{api} holds the routes; C{resource} is the Twisted Web edge; the page
itself is plain files in C{static/}.  Admin actions answer only with
C{--console-admin} (docs/console.md).
"""
