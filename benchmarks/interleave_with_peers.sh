#!/bin/sh
# Interleaved rounds on a shared machine: the best peers (RabbitMQ streams, Redis Streams
# in-memory and appendfsync always) and streamlog (benchmarks/side_by_side.sh, one run) alternate,
# so both see the same neighbours.  PEERS is a writable copy of ../shared/peers with its .venv.
# Usage: benchmarks/interleave_with_peers.sh PEERS OUT.jsonl [ROUNDS]
set -u
PEERS=${1:?usage: interleave_with_peers.sh PEERS_DIR OUT.jsonl [rounds]}
OUT=${2:?usage: interleave_with_peers.sh PEERS_DIR OUT.jsonl [rounds]}
ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
W="produce-100 consume-100 produce-1024 consume-1024 latency"
for i in $(seq "$ROUNDS"); do
  echo "== round $i $(date +%T)"
  (cd "$PEERS" && timeout 300 .venv/bin/python bench.py rabbitmq --runs 1 --workloads $W 2>&1 | grep -E "rabbitmq (produce|consume|latency)")
  (cd "$PEERS" && timeout 300 .venv/bin/python bench.py redis --runs 1 --modes memory aof-always --workloads $W 2>&1 | grep -E "redis .* (produce|consume|latency)")
  "$ROOT/benchmarks/side_by_side.sh" "$OUT" segmented 1 2>&1 | grep -E "^throughput|^latency ms \(end"
done
echo "done $(date +%T)"
