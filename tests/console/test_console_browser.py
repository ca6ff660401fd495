"""The web console in a real browser: headless Chromium (Debian's) driven by Playwright,
against a real node (twistd, 127.0.0.1) holding data this test produced.

Every page must load without a console error or an uncaught exception, show that data,
and the admin actions (create and delete a topic, reset a group's offsets after a dry
run) must change the node.  Message values are user data: one of them is markup that
would run script if the page put it in as HTML; the test checks it is shown as text.

Needs /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it) and the
``playwright`` package (the test extras).  Never skipped: without them it fails and says so.
Set STREAMLOG_CONSOLE_SCREENSHOTS=DIR to keep a screenshot of each page there (docs/console/
holds the ones the docs show).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from streamlog.testing import LineClient, ServerProcess, wait_for

CHROMIUM = os.environ.get("STREAMLOG_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
#: Playwright's per-action wait, seconds; the machine may be loaded.
STEP_TIMEOUT = 30.0


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="streamlog-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": 1200, "height": 800})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class Page:
    """One tab, with every console error and uncaught exception recorded."""

    def __init__(self, context, base: str, shots: Path | None) -> None:
        self.page = context.new_page()
        self.page.set_default_timeout(STEP_TIMEOUT * 1000)
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, hash_: str, ready: str) -> None:
        """Go to C{#hash_} and wait until C{ready} (a selector) is shown."""
        self.page.goto(f"{self.base}/{hash_}")
        self.page.wait_for_selector(ready)
        self.clean()

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        assert self.page.locator("#status.error").count() == 0, self.page.inner_text("#status")

    def shot(self, name: str) -> None:
        path = (self.shots or Path(tempfile.gettempdir())) / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000

    def text(self) -> str:
        return self.page.inner_text("main")

    def until(self, expression: str, what: str) -> None:
        """Wait until C{expression} is true in the page.  (Playwright's wait_for_function builds
        its predicate with eval, which the console's Content-Security-Policy rightly forbids.)"""
        wait_for(lambda: self.page.evaluate(expression), STEP_TIMEOUT, what, interval=0.1)

    def rows(self, table: str) -> list[list[str]]:
        """The cells of C{table}'s body (a selector), as text."""
        return self.page.eval_on_selector(table, "t => [...t.tBodies[0].rows].map("
                                          "r => [...r.cells].map(c => c.innerText.trim()))")


def _produce(client: LineClient) -> str:
    assert "result" in client.call("CreateTopic", {"topic": "orders", "partitions": 2})
    values = [{"total": 12.5, "items": ["tea", "cake"]}, '{"nested": {"depth": 2}}', "plain text", HOSTILE]
    for i, value in enumerate(values):
        sent = client.call("Send", {"topic": "orders", "partition": 0, "key": f"customer-{i}", "value": value,
                                    "headers": {"source": "browser-test"}})
        assert "result" in sent, sent
    for i in range(3):
        assert "result" in client.call("Send", {"topic": "orders", "partition": 1, "value": {"n": i}})
    joined = client.call("JoinGroup", {"group": "billing", "topics": ["orders"], "session_timeout_ms": 60000})
    member = joined["result"]["member_id"]
    beat = client.call("Heartbeat", {"group": "billing", "member_id": member, "owned": []})["result"]
    committed = client.call("CommitOffsets", {"group": "billing", "member_id": member,
                                              "generation": beat["generation"],
                                              "offsets": [{"topic": "orders", "partition": 0, "offset": 3}]})
    assert "result" in committed, committed
    return member


def test_every_page_in_a_real_browser_shows_the_data_and_the_admin_actions_work(tmp_path, browser):
    shots_dir = os.environ.get("STREAMLOG_CONSOLE_SCREENSHOTS")
    shots = Path(shots_dir) if shots_dir else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(tmp_path, ["--console-admin", "--console-sample-interval", "0.5"], http=True)
    client = LineClient(server.port)
    try:
        member = _produce(client)
        page = Page(browser, f"http://127.0.0.1:{server.http_port}", shots)

        page.open("#/overview", "main[data-page=overview] .card")
        text = page.text()
        assert "1 / 1" in text and "node 1" in text and f"127.0.0.1:{server.port}" in text
        assert "admin" in page.page.inner_text("#node")
        page.shot("overview")

        page.open("#/topics", "main[data-page=topics] a[href='#/topics/orders']")
        orders = next(r for r in page.rows("main table") if r[0] == "orders")
        assert orders[2:5] == ["2", "1", "7"]  # 2 partitions, 1 replica, 4 + 3 messages
        page.shot("topics")

        page.open("#/topics/orders", "main[data-page=topics] a[href*='partition=1']")
        text = page.text()
        assert "high watermark" in text and "browse" in text
        page.shot("topic")

        page.open("#/messages?topic=orders&partition=0&from=earliest", "#browse-summary")
        values = page.page.locator("pre.value").all_inner_texts()
        assert '"items": [\n    "tea",\n    "cake"\n  ]' in "\n".join(values)  # an object, pretty-printed
        assert '"nested": {\n    "depth": 2\n  }' in "\n".join(values)  # JSON in a string, pretty-printed
        assert HOSTILE in values and "plain text" in values  # markup shown as text, not run
        assert page.page.evaluate("window.__pwned") is None
        assert page.page.locator("main img").count() == 0
        assert "customer-3" in page.text() and "browser-test" in page.text()
        page.shot("messages")

        # From an offset, in the form, one message a page: the next page follows.
        page.page.select_option("#browse select[name=from]", "offset")
        page.page.fill("#browse input[name=at]", "1")
        page.page.fill("#browse input[name=limit]", "1")
        page.page.click("#browse button[type=submit]")
        page.page.wait_for_selector("#browse-summary:has-text('1 message(s)')")
        assert [r[0] for r in page.rows("main table")] == ["1"]
        page.page.click("#next-page")
        page.until("(document.querySelector('main tbody tr td') || {}).innerText === '2'", "the next page")
        page.clean()

        page.open("#/groups", "main[data-page=groups] a[href='#/groups/billing']")
        assert "stable" in page.text()
        page.shot("groups")

        page.open("#/groups/billing", "main[data-page=groups] h2:has-text('Offsets and lag')")
        text = page.text()
        assert member in text and "orders [0, 1]" in text
        offsets = page.rows("main table:last-of-type")
        assert offsets[0][:5] == ["orders", "0", "3", "4", "1"] and offsets[0][5] == member  # 3 of 4: lag 1
        assert offsets[1][:5] == ["orders", "1", "–", "3", "–"]  # nothing committed: no lag

        # Live charts: messages keep coming, and the chart draws a line through them.
        for i in range(5):
            client.call("Send", {"topic": "orders", "partition": 1, "value": {"more": i}})
        page.open("#/charts", "#throughput-chart")
        page.until("(() => { const p = document.querySelector('#throughput-chart path[data-series=orders]');"
                   " return !!p && (p.getAttribute('d').match(/L/g) || []).length >= 2; })()",
                   "a throughput line of at least three points")
        page.page.wait_for_selector("#lag-chart path[data-series=billing]", state="attached")  # flat: no height
        page.clean()
        page.shot("charts")

        # Admin: create a topic from the form.
        page.open("#/topics", "#create-topic")
        page.page.fill("#create-topic input[name=topic]", "made-in-browser")
        page.page.fill("#create-topic input[name=partitions]", "3")
        page.page.click("#create-topic button[type=submit]")
        page.page.wait_for_selector("main[data-page=topics] h2:has-text('made-in-browser')")
        page.clean()
        listed = {t["topic"]: t["partitions"] for t in client.call("ListTopics")["result"]["topics"]}
        assert listed.get("made-in-browser") == 3

        # Delete it: nothing happens until its name is typed.
        page.page.click("#delete-topic button.danger")
        page.page.fill("#delete-topic input[name=confirm-name]", "made-in-brows")
        page.page.click("#delete-topic button[type=submit]")
        page.page.wait_for_selector("#status.error")
        assert "made-in-browser" in {t["topic"] for t in client.call("ListTopics")["result"]["topics"]}
        page.page.fill("#delete-topic input[name=confirm-name]", "made-in-browser")
        page.page.click("#delete-topic button[type=submit]")
        page.page.wait_for_selector("main[data-page=topics] #create-topic")
        assert "made-in-browser" not in {t["topic"] for t in client.call("ListTopics")["result"]["topics"]}
        assert page.errors == [], page.errors

        # Reset the group's offsets: refused while it has a member, then a dry run, then confirmed.
        assert "result" in client.call("LeaveGroup", {"group": "billing", "member_id": member})
        page.open("#/groups/billing", "#reset-offsets")
        page.page.fill("#reset-offsets input[name=partitions]", "0")
        page.page.select_option("#reset-offsets select[name=to]", "earliest")
        page.page.click("#reset-offsets button[type=submit]")
        page.page.wait_for_selector("#confirm-reset")
        assert page.rows("#reset-plan table") == [["orders", "0", "3", "0"]]
        committed = client.call("FetchOffsets", {"group": "billing"})["result"]["offsets"]
        assert [(o["partition"], o["offset"]) for o in committed] == [(0, 3)]  # a dry run changes nothing
        page.shot("group-reset")
        page.page.click("#confirm-reset")
        wait_for(lambda: client.call("FetchOffsets", {"group": "billing"})["result"]["offsets"][0]["offset"] == 0,
                 STEP_TIMEOUT, "the confirmed reset to reach the node")
        page.page.wait_for_selector("#status.info:has-text('Reset the offsets')")
        page.clean()
    finally:
        client.close()
        server.stop()
