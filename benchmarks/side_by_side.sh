#!/bin/sh
# streamlog's half of the side-by-side run with ../shared/peers (issue 5): the peers'
# workloads (N=200000, batch 1000, 100 B and 1 KiB, produce and consume; e2e at 2000 msg/s
# for 5 s), RUNS times each, with the durable settings (--fsync always, acks=all).
# Usage: benchmarks/side_by_side.sh OUT.jsonl [STORAGE] [RUNS]
set -eu
OUT=${1:?usage: side_by_side.sh OUT.jsonl [segmented|memory] [runs]}
STORAGE=${2:-segmented}
RUNS=${3:-3}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
B="$PY -m streamlog.bench"
COMMON="--storage $STORAGE --fsync always --acks all --max-seconds 45 --quiet --json-out $OUT"
for run in $(seq "$RUNS"); do
  for size in 100 1024; do
    for client in producer batch; do
      $B produce --messages 200000 --batch 1000 --size $size --client $client $COMMON
    done
    $B consume --messages 200000 --batch 1000 --size $size $COMMON
  done
  $B e2e --rate 2000 --duration 5 --size 100 $COMMON
done
