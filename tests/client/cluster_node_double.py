"""A stand-in for `twistd -n streamlog-server`, for the `streamlog cluster up` tests.

Takes the options `cluster up` gives a server (--node-id, --listen, ...), prints
them as one JSON line, listens on the --listen port of 127.0.0.1 and answers
Ping (any other request too, with METHOD_NOT_FOUND), and on the --http-listen
port answers GET /ready (200, or 503 as a node whose cluster has no leader).  Options a test adds after
`--` (so every node gets them) pick one node to misbehave:

  --exit-node N --exit-after S [--exit-status K]   node N exits K (default 3) S seconds after listening
  --ignore-sigterm-node N                          node N ignores SIGTERM (and SIGINT)
  --silent-node N                                  node N accepts connections and never answers
  --unready-node N [--unready-for S]               node N's /ready answers 503 (for S seconds after
                                                   listening, then 200: it prints "ready now" first)
  --before-clusters yes                            refuse --node-id, as a server of before clusters does
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import sys
import threading
import time


def options(argv: list[str]) -> dict[str, str]:
    found = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv):
            found[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            i += 1
    return found


def main() -> None:
    opts = options(sys.argv[1:])
    node = int(opts.get("node-id", "1"))
    print(json.dumps({"node": node, "argv": sys.argv[1:], "pid": os.getpid()}), flush=True)
    if opts.get("before-clusters") == "yes" and "node-id" in opts:
        print("twistd: option --node-id not recognized", flush=True)
        sys.exit(1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # as twistd: either stops it cleanly
        if opts.get("ignore-sigterm-node") == str(node):
            signal.signal(sig, signal.SIG_IGN)
        else:
            signal.signal(sig, lambda *_: stop.set())
    if opts.get("ignore-sigterm-node") == str(node):
        print("ignoring SIGTERM and SIGINT", flush=True)
    port = int(opts["listen"].split(":")[1])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    silent = opts.get("silent-node") == str(node)
    threading.Thread(target=accept, args=(listener, silent), daemon=True).start()
    if opts.get("http-listen", "none") != "none":
        start_http(int(opts["http-listen"].split(":")[1]), opts, node)
    print(f"listening on {port}", flush=True)
    if opts.get("exit-node") == str(node):
        time.sleep(float(opts.get("exit-after", "0")))
        print("exiting on purpose", flush=True)
        print("a last line without its newline", end="", flush=True)
        os._exit(int(opts.get("exit-status", "3")))
    while not stop.wait(0.05):
        pass
    print("stopping on a signal", flush=True)
    sys.exit(0)


def start_http(port: int, opts: dict[str, str], node: int) -> None:
    unready = opts.get("unready-node") == str(node)
    until = time.monotonic() + float(opts.get("unready-for", "inf"))
    said = []

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = not unready or time.monotonic() >= until
            if ready and unready and not said:
                said.append(True)
                print("ready now", flush=True)  # before the first 200: cluster up prints it before "is up"
            body = {"ready": True, "checks": {}} if ready else {"ready": False, "checks": {
                "cluster": {"ok": False, "reason": "the metadata group has no leader"}}}
            data = json.dumps(body).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def accept(listener: socket.socket, silent: bool) -> None:
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock, silent), daemon=True).start()


def serve(sock: socket.socket, silent: bool) -> None:
    reader = sock.makefile("rb")
    for line in reader:
        if silent:
            continue
        request = json.loads(line)
        if request.get("method") == "Ping":
            answer = {"id": request["id"], "result": {"pong": True, "version": "double"}}
        else:
            answer = {"id": request["id"], "error": {"code": "METHOD_NOT_FOUND", "message": "double"}}
        sock.sendall(json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    main()
