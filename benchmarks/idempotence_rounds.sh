#!/bin/bash
# The cost of idempotence on produce throughput: interleaved rounds of on/off, RF=1 and RF=3
# (docs/benchmarks.md, "The cost of idempotence"). The order within a round alternates (on, off
# in odd rounds; off, on in even ones) so that a drifting load does not favour one side; each
# run notes the load average before it. Needs `streamlog` on PATH.
#   benchmarks/idempotence_rounds.sh OUT.jsonl [ROUNDS] [RF1_MESSAGES] [RF3_MESSAGES] [NODES]
# NODES: the node counts to run, "1 3" by default ("3": RF=3 only).
set -u
OUT=${1:?usage: idempotence_rounds.sh OUT.jsonl [ROUNDS] [RF1_MESSAGES] [RF3_MESSAGES]}
ROUNDS=${2:-5}
N1=${3:-1000000}
N3=${4:-300000}
NODES=${5:-1 3}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
  for nodes in $NODES; do
    if [ "$nodes" -eq 1 ]; then n=$N1; else n=$N3; fi
    for m in $order; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      timeout 300 streamlog bench produce --nodes "$nodes" --messages "$n" --size 100 --batch 1000 \
        --idempotence "$m" --label "r$r nodes$nodes idem-$m load$load" --json-out "$OUT" --quiet > /dev/null
      rc=$?
      echo "$(date +%H:%M:%S) round $r nodes=$nodes idempotence=$m load before $load: exit $rc"
    done
  done
done
