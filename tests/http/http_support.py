"""Requests to a resource tree without a socket (Twisted Web's DummyRequest), and to a real listener."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest


class Answer:
    """What a resource answered: status, headers (lower-case names), body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return orjson.loads(self.body)


def get(root: IResource, path: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None) -> Answer:
    """C{path} (such as C{/metrics}) asked of C{root} the way Twisted's Site walks the tree."""
    request = DummyRequest(path.lstrip("/").split("/") if path != "/" else [b""])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.postpath = [p.encode() if isinstance(p, str) else p for p in request.postpath]
    request.method = method
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    assert result is not NOT_DONE_YET, "these resources answer at once"
    request.write(result)
    headers = {k.decode().lower(): v[-1].decode() for k, v in request.responseHeaders.getAllRawHeaders()}
    return Answer(request.responseCode or 200, headers, b"".join(request.written))


def http_get(port: int, path: str, timeout: float = 10.0) -> Answer:
    """A real GET of C{http://127.0.0.1:PORT/PATH}; 4xx/5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())
