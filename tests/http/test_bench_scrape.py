"""`streamlog bench ... --scrape-metrics S`: the bench's server gets its HTTP listener, scraped while the load runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from streamlog.bench.scrape import Scraper

ROOT = Path(__file__).resolve().parents[2]


def test_the_scraper_gets_metrics_every_interval_until_stopped():
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b"streamlog_up 1\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scraper = Scraper(server.server_address[1], 0.01, max_scrapes=5)
        scraper.start()
        scraper._thread.join(10)  # bounded by max_scrapes
        report = scraper.stop()
    finally:
        server.shutdown()
    assert report["scrapes"] == 5 and report["failures"] == 0 and report["bytes"] == 15
    assert hits == ["/metrics"] * 5


def test_bench_with_scrape_metrics_scrapes_its_own_server():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("STREAMLOG_CONNECT", None)
    proc = subprocess.run([sys.executable, "-m", "streamlog.bench", "produce", "--messages", "3000", "--batch", "100",
                           "--scrape-metrics", "0.2", "--json", "--quiet", "--storage", "memory",
                           "--max-seconds", "10"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["metrics_scrape"]["scrapes"] >= 1 and result["metrics_scrape"]["failures"] == 0
    assert result["metrics_scrape"]["bytes"] > 1000


def test_scrape_metrics_is_refused_for_a_server_the_bench_did_not_start():
    proc = subprocess.run([sys.executable, "-m", "streamlog.bench", "produce", "--scrape-metrics", "1",
                           "--connect", "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--scrape-metrics takes seconds > 0" in proc.stderr
