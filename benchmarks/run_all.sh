#!/usr/bin/env bash
# Runs every CPU benchmark with the arguments docs/ quotes, writing docs/figures/*.json and
# docs/bench/*/, then renders the figures into docs/*.md (benchmarks/render_docs.py).
# About 35 minutes on a 2-core machine; run it on a machine as quiet as you can get. The
# sampler runs 12 pairs of 5 s (longer runs: --seconds 10 --pairs 30).
#
#   benchmarks/run_all.sh                  # with .venv/bin/python (scripts/test.sh makes it)
#   PYTHON=/path/to/python benchmarks/run_all.sh
#
# Needs redis-server (workers_throughput.py). The GPU benchmark is separate:
# benchmarks/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { echo "error: no Python at $PY (set PYTHON=...)" >&2; exit 1; }
STEADYGEN="$(dirname "$PY")/steadygen"
[ -x "$STEADYGEN" ] || { echo "error: no steadygen command beside $PY (pip install -e .)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "error: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {
  echo
  echo "== $* ($(date -u +%H:%M:%S))"
  "$@"
}

step "$PY" benchmarks/sampler_overhead.py --seconds 5 --pairs 12 --steps 8 --size 256x256
step "$PY" benchmarks/engine_overhead.py --pairs 30
step "$PY" benchmarks/engine_overhead.py --pairs 30 --clock cpu --json docs/figures/engine_overhead_cpu.json
step "$PY" benchmarks/http_overhead.py --pairs 40
step "$PY" benchmarks/concurrency.py --rounds 4
step "$PY" benchmarks/eta_accuracy.py --bursts 3
step "$PY" benchmarks/workers_throughput.py --jobs 40 --pairs 10
step "$PY" benchmarks/soak.py --jobs 4000
step "$PY" benchmarks/preview_overhead.py --pairs 20 --sizes 256x256,512x512
AB=(--config A:concurrency=4,empty_cache_per_request=true,warmup=false --config B
    --clients 4 --runs 40 --rounds 4 --warmup-runs 2)
step "$STEADYGEN" bench "${AB[@]}" --out docs/bench/ab
step "$STEADYGEN" bench "${AB[@]}" --interfere cpu --out docs/bench/ab-interference
step "$PY" benchmarks/render_docs.py
echo
echo "done: review and commit docs/figures/, docs/bench/ and docs/*.md"
