#!/bin/bash
# Interleaved rounds of the cluster benchmarks (issue 9): streamlog RF=1 (one node) and RF=3
# (a 3-node cluster the bench starts), 100 B and 1 KiB, acks=all, fsync always, produce and
# consume, e2e at 2,000 msgs/s; then the 3-node NATS JetStream cluster of the peers harness
# (single node, R1, R3) at 100 B and 1 KiB. One run of each per round, so the ratios of a
# round were measured under the same load.
#
#   benchmarks/cluster_rounds.sh PEERS_DIR OUT.jsonl [ROUNDS]
#
# PEERS_DIR: a copy of ../shared/peers with its .venv (see its README); its results go to
# PEERS_DIR/results/nats-cluster-*.json and its log to OUT.jsonl.nats.log.
set -u
PEERS=${1:?PEERS_DIR}
OUT=${2:?OUT.jsonl}
ROUNDS=${3:-3}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
for round in $(seq 1 "$ROUNDS"); do
  for size in 100 1024; do
    batch=$([ "$size" = 1024 ] && echo 500 || echo 1000)  # a 1 KiB batch of 1,000 passes the 1 MiB line limit
    for nodes in 1 3; do
      for workload in produce consume; do
        timeout 300 "$PY" -m streamlog.bench "$workload" --nodes "$nodes" --messages 100000 --size "$size" \
          --batch "$batch" --quiet --json-out "$OUT" --label "r$round $workload s$size n$nodes" > /dev/null
      done
    done
  done
  for nodes in 3 1; do
    timeout 300 "$PY" -m streamlog.bench e2e --nodes "$nodes" --rate 2000 --duration 5 --size 100 --quiet \
      --json-out "$OUT" --label "r$round e2e n$nodes" > /dev/null
  done
  for size in 100 1024; do
    (cd "$PEERS" && timeout 400 .venv/bin/python bench.py nats-cluster --parts throughput --runs 1 --size "$size") \
      >> "$OUT.nats.log" 2>&1
  done
done
