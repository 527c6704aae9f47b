#!/usr/bin/env bash
# One command for a GPU machine that has PyTorch but none of our other dependencies and no
# internet: install the carried wheels beside (never over) torch, run the full-size
# benchmark and record an NVML trace, within 8 minutes, leaving JSON and a log in OUTDIR.
#
#   bash benchmarks/gpu/run.sh OUTDIR        # or OUT=OUTDIR bash benchmarks/gpu/run.sh
#
# Environment: WHEELS (default benchmarks/gpu/wheels, from fetch_wheels.sh), PYTHON
# (default python3), SITE_DIR (where new packages go; default /tmp/steadygen-gpu-site),
# BUDGET_S (whole run, default 470), BENCH_ARGS (extra zimage_full.py arguments).
# Without CUDA both scripts run their reduced CPU mode, so this is testable anywhere.
#
# Installation never modifies the Python environment: pip resolves requirements.txt against
# what is installed (torch included) plus the wheels, offline and as a dry run; only what it
# would add or upgrade is unpacked into SITE_DIR, which goes first on PYTHONPATH.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-${OUT:-$repo/benchmark-out}}"
wheels="${WHEELS:-$repo/benchmarks/gpu/wheels}"
py="${PYTHON:-python3}"
site="${SITE_DIR:-/tmp/steadygen-gpu-site}"
budget="${BUDGET_S:-470}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/run.log"
summary="$out/run_summary.json"
start=$(date +%s)
exec > >(tee -a "$log") 2>&1

elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[run.sh $(elapsed) s] $*"; }
stages=()
record() {  # name rc seconds
  stages+=("{\"stage\": \"$1\", \"rc\": $2, \"seconds\": $3}")
  local IFS=,
  printf '{"stages": [%s], "elapsed_s": %s, "out": "%s"}\n' "${stages[*]}" "$(elapsed)" "$out" \
    > "$summary"
}
stage() {  # name timeout_s command...
  local name="$1" limit="$2" t0 rc
  shift 2
  t0=$(date +%s)
  say "stage $name (limit ${limit} s)"
  timeout --signal=TERM --kill-after=15 "$limit" "$@"
  rc=$?
  [[ $rc -eq 124 ]] && say "stage $name hit its ${limit} s limit (partial results are kept)"
  record "$name" "$rc" $(( $(date +%s) - t0 ))
  say "stage $name rc=$rc"
  return 0
}
left() { echo $(( budget - $(elapsed) )); }

say "repo $repo, out $out, wheels $wheels, python $($py -c 'import sys; print(sys.version.split()[0])')"
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_REQUIREMENT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. Install what is missing, from the wheels only.
install() {
  local report=/tmp/steadygen-pip-report.json
  rm -rf "$site" "$report"
  mkdir -p "$site"
  if [[ ! -d "$wheels" ]]; then
    echo "no wheels folder at $wheels: nothing to install (run fetch_wheels.sh to make one)"
  fi
  local links=(--no-index)
  [[ -d "$wheels" ]] && links+=(--find-links "$wheels")
  if ! "$py" -m pip install --dry-run --quiet --report "$report" "${links[@]}" \
      -r "$repo/benchmarks/gpu/requirements.txt"; then
    echo "pip could not resolve requirements.txt from what is installed plus $wheels;"
    echo "falling back to unpacking every carried wheel (--no-deps) into $site"
    [[ -d "$wheels" ]] || return 1
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
      "$wheels"/*.whl
    return $?
  fi
  mapfile -t files < <("$py" - "$report" <<'EOF'
import json, sys
from urllib.parse import unquote, urlparse
for item in json.load(open(sys.argv[1])).get("install", []):
    meta = item["metadata"]
    if meta["name"].lower() == "torch":
        sys.exit("refusing: the resolution wants to install torch " + meta["version"])
    print(unquote(urlparse(item["download_info"]["url"]).path))
EOF
  ) || return 1
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "everything needed is installed already"
    return 0
  fi
  echo "installing ${#files[@]} wheels into $site:"
  printf '  %s\n' "${files[@]##*/}"
  "$py" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "${files[@]}"
}
t0=$(date +%s)
install
rc=$?
record install "$rc" $(( $(date +%s) - t0 ))
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
"$py" - <<'EOF'
import importlib
for name in ("torch", "diffusers", "transformers", "tokenizers", "torchao", "pynvml", "psutil"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:13s} {getattr(mod, '__version__', '?'):14s} {mod.__file__}")
    except Exception as exc:
        print(f"  {name:13s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("  cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
mode=()
[[ "$cuda" == 1 ]] || { mode=(--reduced); say "no CUDA: reduced mode on the CPU"; }

# 2. The benchmark, with the budget that leaves room for the trace.
bench_limit=$(( $(left) - 85 ))
(( bench_limit < 60 )) && bench_limit=60
stage zimage_full "$bench_limit" "$py" "$repo/benchmarks/gpu/zimage_full.py" "${mode[@]}" \
  --out "$out" --budget-s $(( bench_limit - 45 )) ${BENCH_ARGS:-}

# 3. The NVML trace (host-only in reduced mode).
trace_limit=$(( $(left) - 5 ))
if (( trace_limit >= 30 )); then
  stage record_trace "$trace_limit" "$py" "$repo/benchmarks/gpu/record_trace.py" "${mode[@]}" \
    --out "$out"
else
  say "skipping record_trace: ${trace_limit} s left"
  record record_trace -1 0
fi
say "done; files in $out:"
ls -la "$out"
