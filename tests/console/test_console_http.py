"""The console's HTTP edge: routes, JSON errors with their statuses, the read-only default,
the CSRF defence of the admin actions, body limits, security headers and static files
(Twisted Web's DummyRequest over the node's HttpRoot, a broker on a Clock)."""

from __future__ import annotations

from io import BytesIO

import orjson
import pytest
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from streamlog.console.resource import mount
from streamlog.console.shape import ConsoleConfig
from streamlog.http.root import HttpRoot
from streamlog.testing import BrokerHarness


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock)
    c = h.connect()
    assert "result" in c.call("CreateTopic", {"topic": "orders"})
    assert "result" in c.call("Send", {"topic": "orders", "value": "<b>hi</b>"})
    h.settle()
    yield h
    h.broker.groups.stop()
    h.stop()


def site(harness, **config):
    root = HttpRoot()
    console = mount(root, harness.broker, 1, ConsoleConfig(sample_interval=0, **config), harness.clock)
    return root, console


class Answer:
    def __init__(self, request):
        self.status = request.responseCode or 200
        self.headers = {k.decode().lower(): v[-1].decode() for k, v in request.responseHeaders.getAllRawHeaders()}
        self.body = b"".join(request.written)

    def json(self):
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return orjson.loads(self.body)


def ask(harness, root, path, method=b"GET", body=None, headers=None, args=None):
    segments = path.lstrip("/").split("/")
    request = DummyRequest([s.encode() for s in segments])
    request.method = method
    request.path = path.encode()
    request.args = {k.encode(): [v.encode() for v in vs] for k, vs in (args or {}).items()}
    request.content = BytesIO(body or b"")
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is NOT_DONE_YET:
        harness.settle()
        assert request.finished, "the answer did not come"
    else:
        request.write(result)
    return Answer(request)


ADMIN = {"x-streamlog-console": "1", "content-type": "application/json"}


def test_api_answers_json_with_security_headers(harness):
    root, _ = site(harness)
    answer = ask(harness, root, "/api/topics")
    assert answer.status == 200 and answer.json()["topics"][0]["topic"] == "orders"
    assert answer.headers["cache-control"] == "no-store" and answer.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"


def test_messages_with_a_query(harness):
    root, _ = site(harness)
    answer = ask(harness, root, "/api/topics/orders/partitions/0/messages", args={"from": ["earliest"]})
    assert [m["value"] for m in answer.json()["messages"]] == ["<b>hi</b>"]
    twice = ask(harness, root, "/api/topics/orders/partitions/0/messages", args={"offset": ["0", "1"]})
    assert twice.status == 400 and twice.json()["error"]["field"] == "offset"


@pytest.mark.parametrize("path, method, status, code", [
    ("/api/nothing", b"GET", 404, "NOT_FOUND"),
    ("/api/topics/nope", b"GET", 404, "UNKNOWN_TOPIC"),
    ("/api/topics/orders/partitions/9/messages", b"GET", 404, "UNKNOWN_PARTITION"),
    ("/api/topics/orders/partitions/0/messages?offset=5", b"GET", 416, "OFFSET_OUT_OF_RANGE"),
    ("/api/groups/nobody", b"GET", 404, "UNKNOWN_GROUP"),
    ("/api/overview", b"POST", 405, "METHOD_NOT_ALLOWED"),
])
def test_errors_are_json_with_the_protocols_codes(harness, path, method, status, code):
    root, _ = site(harness)
    path, _, query = path.partition("?")
    args = {k: [v] for k, v in (q.split("=") for q in query.split("&"))} if query else None
    if code == "UNKNOWN_GROUP":  # groups exist once the offsets topic does
        assert "result" in harness.connect().call("FindCoordinator", {"group": "x"})
    answer = ask(harness, root, path, method, args=args)
    assert answer.status == status and answer.json()["error"]["code"] == code


def test_method_not_allowed_says_what_is(harness):
    root, _ = site(harness)
    answer = ask(harness, root, "/api/topics/orders", b"PUT")
    assert answer.status == 405 and answer.headers["allow"] == "DELETE, GET"


def test_read_only_by_default_admin_routes_answer_403_and_change_nothing(harness):
    root, _ = site(harness)
    for path, method, body in (("/api/topics", b"POST", b'{"topic": "x"}'), ("/api/topics/orders", b"DELETE", None),
                               ("/api/groups/g/reset-offsets", b"POST", b'{"topic": "orders", "to": "earliest"}')):
        answer = ask(harness, root, path, method, body, ADMIN)
        assert answer.status == 403 and answer.json()["error"]["code"] == "CONSOLE_READ_ONLY", path
    assert sorted(harness.broker.topics) == ["orders"]
    assert ask(harness, root, "/api/overview").json()["admin"] is False


@pytest.mark.parametrize("headers", [
    {"content-type": "application/json"},  # no console header: a plain cross-site form or fetch
    {**ADMIN, "x-streamlog-console": "yes"},
    {**ADMIN, "origin": "http://evil.example", "host": "127.0.0.1:9644"},
    {**ADMIN, "sec-fetch-site": "cross-site"},
])
def test_admin_requests_without_the_csrf_header_or_from_elsewhere_are_refused(harness, headers):
    root, _ = site(harness, admin=True)
    answer = ask(harness, root, "/api/topics", b"POST", b'{"topic": "x"}', headers)
    assert answer.status == 403 and answer.json()["error"]["code"] == "CSRF_CHECK_FAILED"
    assert "x" not in harness.broker.topics


def test_admin_from_the_same_origin_creates_and_deletes(harness):
    root, _ = site(harness, admin=True)
    same = {**ADMIN, "origin": "http://127.0.0.1:9644", "host": "127.0.0.1:9644", "sec-fetch-site": "same-origin"}
    created = ask(harness, root, "/api/topics", b"POST", b'{"topic": "x", "partitions": 2}', same)
    assert created.status == 200 and len(created.json()["partitions"]) == 2 and "x" in harness.broker.topics
    assert ask(harness, root, "/api/topics", b"POST", b'{"topic": "x"}', same).json()["error"]["code"] == "TOPIC_EXISTS"
    deleted = ask(harness, root, "/api/topics/x", b"DELETE", None, same)
    assert deleted.json() == {"topic": "x", "deleted": True} and "x" not in harness.broker.topics


@pytest.mark.parametrize("body, headers, status, code", [
    (b"{not json", ADMIN, 400, "PARSE_ERROR"),
    (b'{"topic": "x"}', {"x-streamlog-console": "1", "content-type": "text/plain"}, 400, "INVALID_REQUEST"),
    (b'{"topic": "' + b"x" * 2000 + b'"}', ADMIN, 413, "BODY_TOO_LARGE"),
    (b'{"topic": "x", "partitions": 0}', ADMIN, 400, "INVALID_PARAMS"),
    (b'["x"]', ADMIN, 400, "INVALID_PARAMS"),
])
def test_bad_admin_bodies(harness, body, headers, status, code):
    root, _ = site(harness, admin=True, max_body_bytes=1024)
    answer = ask(harness, root, "/api/topics", b"POST", body, headers)
    assert answer.status == status and answer.json()["error"]["code"] == code
    assert "x" not in harness.broker.topics


def test_the_page_and_its_files_and_nothing_else(harness):
    root, _ = site(harness)
    page = ask(harness, root, "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"/static/console.js" in page.body and b"<script>" not in page.body  # no inline script (CSP)
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers it
    script = ask(harness, root, "/static/console.js")
    assert script.headers["content-type"].startswith("text/javascript") and b"textContent" in script.body
    assert ask(harness, root, "/static/console.css").headers["content-type"].startswith("text/css")
    missing = ask(harness, root, "/static/nope.js")
    assert missing.status == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert ask(harness, root, "/static/../resource.py").status == 404


def test_the_page_loads_nothing_from_elsewhere():
    import os
    import re

    from streamlog.console.resource import STATIC_DIR

    for name in os.listdir(STATIC_DIR):
        with open(os.path.join(STATIC_DIR, name), encoding="utf-8") as f:
            text = f.read()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), name
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text, name
