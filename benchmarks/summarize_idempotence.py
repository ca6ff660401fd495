"""Per-round ratios of idempotence on/off from benchmarks/idempotence_rounds.sh output.

    python benchmarks/summarize_idempotence.py RESULTS.jsonl

Throughput ratio (msgs/s on / off) and CPU ratio: the CPU seconds the bench measured for the
server (or the three nodes) and the producer process during the run, on over off; the CPU
ratio is the steadier one on a shared machine (a process starved of a core is slow, not costly).
"""

import json
import statistics
import sys


def main(path: str) -> None:
    runs = {}
    for line in open(path):
        r = json.loads(line)
        round_, nodes, idem = r["label"].split()[:3]
        cpu, elapsed = r["cpu_pct_of_one_core"], r["elapsed_s"]
        server = (cpu["server"] if cpu.get("server") is not None else sum(cpu["nodes"])) * elapsed / 100
        client = sum(cpu["producers"]) * elapsed / 100
        runs[(nodes, round_, idem)] = (r["msgs_per_s"], server + client, r["loadavg_1m_before"])
    for nodes in sorted({k[0] for k in runs}):
        throughput, cpu = [], []
        for round_ in sorted({k[1] for k in runs if k[0] == nodes}):
            on, off = runs.get((nodes, round_, "idem-on")), runs.get((nodes, round_, "idem-off"))
            if on is None or off is None:
                continue
            throughput.append(on[0] / off[0])
            cpu.append(on[1] / off[1])
            print(f"{nodes} {round_}: on {on[0]:,.0f} off {off[0]:,.0f} msgs/s, ratio {throughput[-1]:.2f}; "
                  f"CPU {on[1]:.2f} / {off[1]:.2f} s, ratio {cpu[-1]:.3f}; load {on[2]} / {off[2]}")
        print(f"{nodes}: median throughput ratio {statistics.median(throughput):.3f}, "
              f"median CPU ratio {statistics.median(cpu):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
