#!/bin/sh
# What metrics cost the hot path (issue 12): the same produce and consume workloads on
#   base  the code of BASE_DIR (main before the metrics, e.g. `git archive main | tar -x -C DIR`),
#   off   this checkout with --http-listen none (the counters are bumped, nothing scrapes them),
#   on    this checkout with its HTTP listener, /metrics scraped every second (--scrape-metrics 1),
# interleaved round by round so the shared machine's load falls on all three alike.
# Usage: benchmarks/metrics_cost.sh OUT.jsonl BASE_DIR [ROUNDS] [MESSAGES]
set -eu
OUT=${1:?usage: metrics_cost.sh OUT.jsonl BASE_DIR [rounds] [messages]}
BASE=${2:?the directory of the base code}
ROUNDS=${3:-5}
N=${4:-200000}
cd "$(dirname "$0")/.."
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
case $OUT in /*) ;; *) OUT=$HERE/$OUT ;; esac
COMMON="--messages $N --batch 1000 --size 100 --acks all --storage segmented --fsync always --max-seconds 60 --quiet --json-out $OUT"
for round in $(seq "$ROUNDS"); do
  for workload in produce consume; do
    (cd "$BASE" && PYTHONPATH=$BASE $PY -m streamlog.bench $workload $COMMON --label "base r$round")
    $PY -m streamlog.bench $workload $COMMON --label "off r$round"
    $PY -m streamlog.bench $workload $COMMON --scrape-metrics 1 --label "on r$round"
  done
done
