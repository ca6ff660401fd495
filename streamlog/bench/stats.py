"""Latency statistics and result formatting for C{streamlog bench}."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (empty: nan)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_ms: Iterable[float]) -> dict[str, Any]:
    """C{{count, mean, p50, p95, p99, p99.9, max}} in milliseconds."""
    values = sorted(values_ms)
    out: dict[str, Any] = {"count": len(values)}
    if not values:
        out.update({name: None for name, _ in PERCENTILES})
        out.update({"mean": None, "max": None})
        return out
    out["mean"] = round(sum(values) / len(values), 4)
    for name, pct in PERCENTILES:
        out[name] = round(percentile(values, pct), 4)
    out["max"] = round(values[-1], 4)
    return out


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def format_report(result: dict[str, Any]) -> str:
    """The human-readable block printed at the end of a run."""
    w = result["workload"]
    srv = result["server"]
    client = {"produce": result["client"], "consume": "Consumer (prefetch)",
              "e2e": "Producer(linger 0) + Consumer(long poll)"}[w]
    lines = [
        f"streamlog bench {w}: {fmt_int(result['messages'])} msgs x {result['size']} B, "
        f"batch {result['batch']}, acks={result['acks']}, {result['partitions']} partition(s), "
        f"{result['processes']} {'producer' if w != 'consume' else 'consumer'} process(es), client={client}"
        + (f", {fmt_int(result['keys'])} distinct keys" if result.get("keys") else "")
        + (f", {fmt_int(result['requests'])} SendBatch requests" if result.get("requests") else ""),
        f"server: {srv['origin']}, storage={srv['storage']}, fsync={srv['fsync']}, "
        f"replication factor {srv['replication_factor']}; answers said durability={result.get('durability')} "
        f"(to acks={result.get('durability_probe_acks')}); load processes' GC threshold "
        f"{srv.get('client_gc_threshold', 'default')} (0 = Python's)",
    ]
    if w == "e2e":
        lines.append(f"rate: target {fmt_int(result['target_rate'])} msgs/s, achieved "
                     f"{fmt_int(result['msgs_per_s'])} msgs/s over {result['elapsed_s']:.2f} s; "
                     f"received {fmt_int(result['received'])}/{fmt_int(result['messages'])}")
    else:
        lines.append(f"throughput: {fmt_int(result['msgs_per_s'])} msgs/s, {result['mb_per_s']:.1f} MB/s "
                     f"(payload, 10^6 B) in {result['elapsed_s']:.3f} s")
    for label, key in (("latency", "latency_ms"), ("ack latency", "ack_latency_ms")):
        lat = result.get(key)
        if not lat or not lat.get("count"):
            continue
        parts = " ".join(f"{name} {lat[name]:.3f}" for name, _ in PERCENTILES)
        lines.append(f"{label} ms ({result.get(key.replace('_ms', '_what'), '')}, n={lat['count']}): "
                     f"{parts} max {lat['max']:.3f}")
    cpu = result.get("cpu_pct_of_one_core")
    if cpu:
        if cpu.get("nodes"):
            parts = ["nodes " + ", ".join(f"{c}%" for c in cpu["nodes"])]
        else:
            parts = [f"server {cpu['server']}%" if cpu.get("server") is not None else "server ?"]
        for role in ("producers", "consumers"):
            if cpu.get(role):
                parts.append(f"{role} " + ", ".join(f"{c}%" for c in cpu[role]))
        if cpu.get("machine") is not None:
            parts.append(f"whole machine {cpu['machine']}% of {result.get('nproc') or '?'} cores x 100%")
        lines.append("cpu (% of one core over the measured phase): " + "; ".join(parts))
    probe = result.get("disk_fsync_ms_before")
    if probe:
        lines.append(f"disk: append+fsync before the run p50 {probe['p50']:.3f} ms, p99 {probe['p99']:.3f} ms "
                     f"(n={probe['count']}); machine load average {result.get('loadavg_1m_before')}")
    scrape = result.get("metrics_scrape")
    if scrape:
        lines.append(f"metrics: /metrics scraped every {scrape['interval_s']:g} s: {scrape['scrapes']} scrapes "
                     f"({scrape['failures']} failed), median {scrape['median_ms']} ms, max {scrape['max_ms']} ms, "
                     f"{scrape['bytes']} bytes")
    if result.get("warnings"):
        for warning in result["warnings"]:
            lines.append(f"warning: {warning}")
    return "\n".join(lines)
