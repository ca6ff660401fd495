"""The HTTP listener's root resource: mounting by name, JSON 404s, the listing at /."""

from __future__ import annotations

import pytest
from http_support import get
from twisted.web.resource import Resource

from streamlog.http.root import HttpRoot, json_body


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return json_body(request, 200, {"hello": "/".join(p.decode() for p in request.postpath)})


def test_a_mounted_child_answers_below_its_name():
    root = HttpRoot()
    root.mount("hello", Hello())
    answer = get(root, "/hello/a/b")
    assert answer.status == 200 and answer.json() == {"hello": "a/b"}
    assert answer.headers["cache-control"] == "no-store"


def test_a_path_nobody_mounted_is_a_json_404_that_lists_what_is_there():
    root = HttpRoot()
    root.mount("metrics", Hello())
    root.mount("health", Hello())
    answer = get(root, "/nothing/here")
    assert answer.status == 404
    assert answer.json() == {"error": {"code": "NOT_FOUND",
                                       "message": "nothing is served at /nothing; try /health, /metrics"}}


def test_slash_lists_the_mounted_paths_until_something_is_mounted_there():
    root = HttpRoot()
    root.mount("metrics", Hello())
    assert get(root, "/").json() == {"paths": ["/metrics"]}
    root.mount("", Hello())  # the console's page
    assert get(root, "/").json() == {"hello": ""}


def test_mounting_a_name_twice_or_a_path_of_two_segments_is_refused():
    root = HttpRoot()
    root.mount("metrics", Hello())
    with pytest.raises(ValueError, match="mounted already"):
        root.mount("metrics", Hello())
    with pytest.raises(ValueError, match="one path segment"):
        root.mount("api/v1", Hello())
