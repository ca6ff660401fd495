"""The root resource of a node's HTTP listener, and the JSON answers its children share.

Other parts of the node mount their resources on it by name
(L{HttpRoot.mount}); a path nobody mounted is a JSON 404, so a client always
gets a body it can parse.  C{mount("", resource)} is the page at C{/}.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

JSON_CONTENT_TYPE = b"application/json"


def json_body(request: Request, status: int, body: Any) -> bytes:
    """Set C{status} and a JSON content type on C{request}; the encoded C{body}.

    For C{render_GET} and friends: C{return json_body(request, 503, {...})}.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body) + b"\n"


class JSONError(Resource):
    """A JSON error answer (404 for a path nobody mounted, 405 for a method a resource lacks)."""

    isLeaf = True

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__()
        self.status = status
        self.body = {"error": {"code": code, "message": message}}

    def render(self, request: Request) -> bytes:
        return json_body(request, self.status, self.body)


class HttpRoot(Resource):
    """The tree under C{/}: children mounted by name, a JSON 404 for the rest."""

    def __init__(self) -> None:
        super().__init__()

    def mount(self, name: str, resource: IResource) -> None:
        """Serve C{resource} at C{/name} (and below it, as its own children say).

        C{name} is one path segment, without slashes; C{""} is the page at
        C{/}.  Mounting a name twice is a mistake of the program, not
        something to resolve quietly: it raises C{ValueError}.
        """
        if "/" in name:
            raise ValueError(f"mount: {name!r} is not one path segment")
        key = name.encode("ascii")
        if key in self.children:
            raise ValueError(f"mount: /{name} is mounted already")
        self.putChild(key, resource)

    def mounted(self) -> list[str]:
        """The names mounted, sorted (for the 404 answer and tests)."""
        return sorted(k.decode("ascii") for k in self.children)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"" and len(request.prepath) == 1:
            return self  # "/" with nothing mounted at "": render() lists what is
        shown = "/" + "/".join(p.decode("utf-8", "replace") for p in request.prepath)
        return JSONError(404, "NOT_FOUND", f"nothing is served at {shown}; try "
                         + ", ".join("/" + name for name in self.mounted()))

    def render(self, request: Request) -> bytes:
        # "/" itself when nothing mounted "" (the console does): say what is here.
        return json_body(request, 200, {"paths": ["/" + name for name in self.mounted()]})
