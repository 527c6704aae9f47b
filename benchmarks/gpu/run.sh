#!/usr/bin/env bash
# One command for a GPU machine that has PyTorch but none of our other dependencies and no
# internet: check torch is there (never install it), install the carried wheels beside it,
# record the versions, run the full-size benchmark and, with time left, an NVML trace, all
# within BUDGET_S (default 540 s, inside a 600 s device session), leaving JSON and a log in
# OUTDIR: zimage_full.json is complete enough to commit as it is.
#
#   bash benchmarks/gpu/run.sh OUTDIR        # or OUT=OUTDIR bash benchmarks/gpu/run.sh
#
# Environment: WHEELS (default benchmarks/gpu/wheels, from fetch_wheels.sh), PYTHON
# (default python3), SITE_DIR (where new packages go; default /tmp/steadygen-gpu-site),
# BUDGET_S (whole run, default 540), TRACE_S (seconds kept for the NVML trace; default 0:
# the benchmark gets them all and the trace runs only with 45 s left over),
# BENCH_ARGS (extra zimage_full.py arguments).
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
budget="${BUDGET_S:-540}"
trace_s="${TRACE_S:-0}"
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

# 0. torch must be there already: this script never installs it (the GPU image's build
# matches its driver and CUDA; a wheel from elsewhere would not).
if ! torch_v=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  say "torch is not importable by $py: install it first (run.sh never installs torch)"
  record torch_check 1 0
  exit 1
fi
say "torch $torch_v (preinstalled; never installed by run.sh)"
record torch_check 0 0

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
    local all=()
    for w in "$wheels"/*.whl; do
      [[ "${w##*/}" == torch-* ]] && { echo "  skipping ${w##*/}: never torch"; continue; }
      all+=("$w")
    done
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "${all[@]}"
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
"$py" - "$out/versions.json" <<'EOF'
import importlib, json, platform, sys
versions = {"python": platform.python_version()}
for name in ("torch", "diffusers", "transformers", "tokenizers", "torchao", "pynvml", "psutil"):
    try:
        mod = importlib.import_module(name)
        versions[name] = getattr(mod, "__version__", "?")
        print(f"  {name:13s} {versions[name]:14s} {mod.__file__}")
    except Exception as exc:
        versions[name] = None
        print(f"  {name:13s} MISSING ({type(exc).__name__}: {exc})")
import torch
cuda = torch.cuda.is_available()
versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if
                torch.backends.cudnn.is_available() else None,
                device=torch.cuda.get_device_name(0) if cuda else "cpu")
print("  cuda available:", cuda, versions["device"], "cudnn", versions["cudnn"])
json.dump(versions, open(sys.argv[1], "w"), indent=2)
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
mode=()
[[ "$cuda" == 1 ]] || { mode=(--reduced); say "no CUDA: reduced mode on the CPU"; }

# 2. The benchmark, with the budget that leaves room for the trace.
bench_limit=$(( $(left) - trace_s - 15 ))
(( bench_limit < 60 )) && bench_limit=60
stage zimage_full "$bench_limit" "$py" "$repo/benchmarks/gpu/zimage_full.py" "${mode[@]}" \
  --out "$out" --budget-s $(( bench_limit - 45 )) ${BENCH_ARGS:-}

# 3. The NVML trace (host-only in reduced mode).
trace_limit=$(( $(left) - 5 ))
if (( trace_limit >= 45 )); then
  stage record_trace "$trace_limit" "$py" "$repo/benchmarks/gpu/record_trace.py" "${mode[@]}" \
    --out "$out"
else
  say "skipping record_trace: ${trace_limit} s left"
  record record_trace -1 0
fi
say "done; files in $out:"
ls -la "$out"
