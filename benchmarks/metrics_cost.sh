#!/bin/sh
# What metrics cost the hot path (issue 12): the same produce and consume workloads on
#   base  the code of BASE_DIR (main before the metrics, e.g. `git archive main | tar -x -C DIR`),
#   off   this checkout with --http-listen none (the counters are bumped, nothing scrapes them),
#   on    this checkout with its HTTP listener, /metrics scraped every second (--scrape-metrics 1),
# interleaved round by round so the shared machine's load falls on all three alike, the order
# rotated each round (base off on, off on base, on base off: a run right after another one's
# writes may pay for their writeback).
# Usage: benchmarks/metrics_cost.sh OUT.jsonl BASE_DIR [ROUNDS] [MESSAGES] [WORKLOADS]
set -eu
OUT=${1:?usage: metrics_cost.sh OUT.jsonl BASE_DIR [rounds] [messages]}
BASE=${2:?the directory of the base code}
ROUNDS=${3:-5}
N=${4:-200000}
WORKLOADS=${5:-produce consume}
cd "$(dirname "$0")/.."
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
case $OUT in /*) ;; *) OUT=$HERE/$OUT ;; esac
COMMON="--messages $N --batch 1000 --size 100 --acks all --storage segmented --fsync always --max-seconds 60 --quiet --json-out $OUT"
one() {
  case $1 in
    base) (cd "$BASE" && PYTHONPATH=$BASE $PY -m streamlog.bench $2 $COMMON --label "base r$3") ;;
    off) $PY -m streamlog.bench $2 $COMMON --label "off r$3" ;;
    on) $PY -m streamlog.bench $2 $COMMON --scrape-metrics 1 --label "on r$3" ;;
  esac
}
for round in $(seq "$ROUNDS"); do
  case $((round % 3)) in
    1) order="base off on" ;;
    2) order="off on base" ;;
    0) order="on base off" ;;
  esac
  for workload in $WORKLOADS; do
    for config in $order; do one $config $workload $round; done
  done
done
