"""The console's Twisted Web edge: C{/api/...} as JSON, the page and its files.

L{mount} puts the console on the node's HTTP root resource: C{/} (the page),
C{/static/} (its script and style sheet, shipped in the package) and
C{/api/}.  The API resource only turns requests into L{ConsoleApi.answer}
calls and answers into JSON; it also holds the CSRF defence of the admin
actions (docs/console.md): a POST or DELETE must carry the header
C{X-Streamlog-Console: 1}, which a page of another origin cannot send
without a CORS preflight this server never grants, and an C{Origin} or
C{Sec-Fetch-Site} header, when the browser sends one, must say same origin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server, static
from twisted.web.resource import Resource

from streamlog import errors
from streamlog.console.api import (
    ADMIN_ROUTES,
    BodyTooLarge,
    ConsoleApi,
    CsrfCheckFailed,
    MethodNotAllowed,
    http_status,
    read_only,
    route,
)
from streamlog.console.calls import NodeCalls
from streamlog.console.samples import SampleHistory, Sampler
from streamlog.console.shape import ConsoleConfig
from streamlog.http.root import HttpRoot, JSONError

#: The page's files, inside the package (setup.cfg package_data).
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: The header every mutating request must carry (the page's script sets it).
CSRF_HEADER = "x-streamlog-console"

#: Sent with every console answer: no framing by other sites, no content sniffing, and
#: for the page no script, style or connection but its own origin's (no inline script).
_SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
}


def _secure(request: Any) -> None:
    for name, value in _SECURITY_HEADERS.items():
        request.setHeader(name, value)


class ApiResource(Resource):
    """C{/api/<path>}: one route per request, answered as JSON (errors too)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, api: ConsoleApi) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> Any:
        _secure(request)
        request.setHeader(b"cache-control", b"no-store")
        try:
            method = request.method.decode("ascii")
            segments = [s.decode("utf-8") for s in request.postpath]
            name, args = route(method, segments)
            query = _query(request.args)
            body = None
            if name in ADMIN_ROUTES:
                if not self.api.config.admin:
                    raise read_only()
                _check_same_origin(request)
                body = self._body(request) if method == "POST" else None
        except errors.StreamlogError as e:
            return self._error(request, e)
        except UnicodeDecodeError:
            return self._error(request, errors.InvalidParams("the path is not UTF-8"))
        d = Deferred.fromCoroutine(self.api.answer(name, args, query, body))
        finished: list[Any] = []
        request.notifyFinish().addBoth(finished.append)

        def answered(result: Any) -> None:
            if not finished:
                self._write(request, 200, result)

        def failed(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, errors.StreamlogError):
                self._log.failure("console API {path} failed", failure, path=request.path)
                error = errors.Internal("internal error (logged by the node)")
            if not finished:
                self._write(request, http_status(error), {"error": error.to_wire()})

        d.addCallbacks(answered, failed)
        return server.NOT_DONE_YET

    def _body(self, request: Any) -> Any:
        limit = self.api.config.max_body_bytes
        raw = request.content.read(limit + 1) if request.content is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes (--console-max-body-bytes)",
                               limit=limit)
        if not raw.strip():
            return {}
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise errors.InvalidRequest("the body must be JSON (Content-Type: application/json)")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise errors.ParseError(f"the body is not JSON: {e}") from None

    def _error(self, request: Any, error: errors.StreamlogError) -> bytes:
        if isinstance(error, MethodNotAllowed):
            request.setHeader(b"allow", ", ".join(error.details.get("allow", [])).encode())
        return self._encode(request, http_status(error), {"error": error.to_wire()})

    def _write(self, request: Any, status: int, value: Any) -> None:
        request.write(self._encode(request, status, value))
        request.finish()

    @staticmethod
    def _encode(request: Any, status: int, value: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if request.method == b"HEAD":
            return b""
        return orjson.dumps(value)


def _query(args: Mapping[bytes, list[bytes]]) -> dict[str, str]:
    query = {}
    for key, values in args.items():
        name = key.decode("utf-8")
        if len(values) != 1:
            raise errors.InvalidParams(f"query parameter {name!r} given {len(values)} times", field=name)
        query[name] = values[0].decode("utf-8")
    return query


def _check_same_origin(request: Any) -> None:
    """The CSRF defence of the admin actions (see the module's docstring)."""
    if request.getHeader(CSRF_HEADER) != "1":
        raise CsrfCheckFailed("an admin request must carry the header X-Streamlog-Console: 1 "
                              "(the console page sends it)")
    site = request.getHeader("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise CsrfCheckFailed(f"an admin request must come from the console's own page (Sec-Fetch-Site: {site})")
    origin = request.getHeader("origin")
    host = request.getHeader("host")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        raise CsrfCheckFailed(f"an admin request must come from the console's own origin, not {origin}")


class _StaticFiles(static.File):
    """The page's files, with the console's security headers; no directory listings."""

    childNotFound = JSONError(404, "NOT_FOUND", "no such console file")

    def render(self, request: Any) -> Any:
        _secure(request)
        request.setHeader(b"cache-control", b"no-cache")
        return super().render(request)

    def directoryListing(self) -> Resource:
        return self.childNotFound


class Console:
    """The console of one node: its API, its sampler; L{start} and L{stop} with the node."""

    def __init__(self, api: ConsoleApi, sampler: Sampler, calls: NodeCalls) -> None:
        self.api = api
        self.sampler = sampler
        self.calls = calls

    def start(self) -> None:
        self.sampler.start()

    def stop(self) -> Deferred | None:
        self.sampler.stop()
        return self.calls.close()


def mount(root: HttpRoot, broker: Any, node_id: int, config: ConsoleConfig, clock: IReactorTime,
          connect: Any = None) -> Console:
    """Put the console on the node's HTTP root: C{/}, C{/static/}, C{/api/}.  Returns it, not yet started.

    @param broker: the node's L{streamlog.broker.broker.Broker} (its handlers are called in process).
    @param connect: address -> client, for the calls a leader or coordinator elsewhere answers
        (default: a L{streamlog.client.connection.StreamlogClient} on C{clock}).
    """
    if connect is None:
        from streamlog.client.connection import StreamlogClient

        def connect(address: str) -> StreamlogClient:
            return StreamlogClient(address, clock=clock, request_timeout=10.0)

    calls = NodeCalls(broker.handlers, connect)
    history = SampleHistory(config.samples)
    api = ConsoleApi(calls, config, node_id, lambda topic: local_sizes(broker, topic), clock, history)
    sampler = Sampler(history, lambda: Deferred.fromCoroutine(api.take_sample()), config.sample_interval, clock)
    root.mount("api", ApiResource(api))
    files = _StaticFiles(STATIC_DIR, defaultType="application/octet-stream")
    files.contentTypes = {**files.contentTypes, ".js": "text/javascript; charset=utf-8",
                          ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8"}
    root.mount("static", files)
    root.mount("", _StaticFiles(os.path.join(STATIC_DIR, "index.html"), defaultType="text/html; charset=utf-8"))
    return Console(api, sampler, calls)


def local_sizes(broker: Any, topic: str) -> dict[int, int]:
    """Bytes on disk of this node's replicas of C{topic}, by partition."""
    found = broker.topics.get(topic)
    sizes: dict[int, int] = {}
    for replica in getattr(found, "partitions", None) or []:
        size = getattr(getattr(replica, "log", None), "size_bytes", None)
        if isinstance(size, int):
            sizes[replica.index] = size
    return sizes
