#!/usr/bin/env python
"""Diagnostic: a streamlog server with timing probes around its group commit.

    PYTHONPATH=. .venv/bin/python benchmarks/group_commit_probe.py OUT.json streamlog-server \
        --listen tcp:0:interface=127.0.0.1 --port-file PORTFILE --data-dir DIR --storage segmented --fsync always \
        --http-listen none
    .venv/bin/python -m streamlog.bench e2e --connect 127.0.0.1:$(cat PORTFILE)
    kill -TERM <its pid>        # OUT.json is written at shutdown

Wraps (in this process only; no repository code changes) GroupCommitter.wait, ._round,
._sync_job and storage.group_commit._sync_one, and reports p50/p99/max in ms of:
wait_to_fire (a Send's commit wait), job_in_thread (one log's sync job, in a sync worker),
hop_total (job submitted to result back in the reactor), wait_to_round (waiting for the next
round) and waiters_per_round.  It relies on private names of streamlog.storage.group_commit: update it
when they change.
"""

import atexit
import json
import sys
import time

from streamlog.storage import group_commit as gc

T = time.perf_counter
rec = {"wait_to_fire": [], "job_in_thread": [], "hop_total": [], "waiters_per_round": [], "wait_to_round": []}
_pending_waits = []

orig_wait = gc.GroupCommitter.wait
def wait(self, log, offset):
    t0 = T()
    d = orig_wait(self, log, offset)
    if not d.called:
        _pending_waits.append(t0)
        def fired(r, t0=t0):
            rec["wait_to_fire"].append((T() - t0) * 1000)
            return r
        d.addBoth(fired)
    return d
gc.GroupCommitter.wait = wait

orig_round = gc.GroupCommitter._round
def _round(self):
    now = T()
    n = sum(len(v) for v in self._waiters.values())
    rec["waiters_per_round"].append(n)
    while _pending_waits:
        rec["wait_to_round"].append((now - _pending_waits.pop()) * 1000)
    return orig_round(self)
gc.GroupCommitter._round = _round

orig_sync_one = gc._sync_one
def _sync_one(log):
    t0 = T()
    try:
        return orig_sync_one(log)
    finally:
        rec["job_in_thread"].append((T() - t0) * 1000)
gc._sync_one = _sync_one

orig_job = gc.GroupCommitter._sync_job
def _sync_job(self, key, log):
    t0 = T()
    d = orig_job(self, key, log)
    d.addBoth(lambda r: (rec["hop_total"].append((T() - t0) * 1000), r)[1])
    return d
gc.GroupCommitter._sync_job = _sync_job

def dump():
    out = {}
    for k, v in rec.items():
        v = sorted(v)
        if v:
            n = len(v)
            out[k] = {"n": n, "p50": round(v[n // 2], 3), "p99": round(v[int(n * 0.99)], 3), "max": round(v[-1], 3)}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
atexit.register(dump)
from twisted.internet import reactor

reactor.addSystemEventTrigger("before", "shutdown", dump)

from twisted.application.twist._twist import Twist

out_file = sys.argv[1]
Twist.main(["twist"] + sys.argv[2:])
