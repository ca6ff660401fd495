#!/bin/sh
# benchmarks/metrics_hot_path.py on this checkout and on BASE_DIR, alternating process by process.
# Usage: benchmarks/metrics_hot_path.sh OUT.jsonl BASE_DIR [ALTERNATIONS]
set -eu
OUT=${1:?usage: metrics_hot_path.sh OUT.jsonl BASE_DIR [alternations]}
BASE=${2:?the directory of the base code}
N=${3:-8}
cd "$(dirname "$0")/.."
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
case $OUT in /*) ;; *) OUT=$HERE/$OUT ;; esac
for i in $(seq "$N"); do
  (cd "$BASE" && PYTHONPATH=$BASE $PY "$HERE/benchmarks/metrics_hot_path.py" 2 >> "$OUT")
  $PY benchmarks/metrics_hot_path.py 2 >> "$OUT"
done
