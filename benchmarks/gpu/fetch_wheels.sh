#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels run.sh installs offline on a GPU
# machine: every entry of wheels.lock (never torch), --no-deps, binary only, for the GPU
# machine's Python and platform (not this machine's).
#
#   benchmarks/gpu/fetch_wheels.sh [DEST]          # DEST: $WHEELS or benchmarks/gpu/wheels
#   PYTHON_VERSIONS="3.11 3.12" benchmarks/gpu/fetch_wheels.sh /tmp/w
#   ONLY="diffusers transformers torchao importlib_metadata" benchmarks/gpu/fetch_wheels.sh
#   LIST=benchmarks/gpu/carry.txt benchmarks/gpu/fetch_wheels.sh   # the lent GPU's subset
#
# PYTHON_VERSIONS: the GPU machine's python3 (default 3.12); several fetch for each.
# ONLY: a subset of wheels.lock by name, for a GPU image that already has the rest (the
# carried folder must stay small; run.sh prints what it could not resolve).
# Keep the folder out of git (.gitignore: benchmarks/gpu/wheels/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-${WHEELS:-$here/wheels}}"
versions="${PYTHON_VERSIONS:-3.12}"
only="${ONLY:-}"
list="${LIST:-$here/wheels.lock}"
python="${PYTHON:-python3}"
mkdir -p "$dest"

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux2010_x86_64 \
         manylinux_2_12_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done

mapfile -t pins < <(grep -v '^\s*#' "$list" | sed '/^\s*$/d')
if [[ -n "$only" ]]; then
  selected=()
  for pin in "${pins[@]}"; do
    name="${pin%%==*}"
    for want in $only; do
      norm() { echo "$1" | tr '[:upper:]_.' '[:lower:]--'; }
      [[ "$(norm "$name")" == "$(norm "$want")" ]] && selected+=("$pin")
    done
  done
  pins=("${selected[@]}")
fi
echo "fetching ${#pins[@]} wheels for python ${versions} into $dest"

for v in $versions; do
  # One call for all pins: pip downloads each once and skips files already there.
  "$python" -m pip download --no-deps --only-binary=:all: --implementation cp \
    --python-version "$v" "${platforms[@]}" --dest "$dest" "${pins[@]}"
done

if ls "$dest" | grep -qi '^torch-'; then
  echo "error: a torch wheel is in $dest; run.sh must never install torch" >&2
  exit 1
fi
count=$(ls "$dest"/*.whl | wc -l)
size=$(du -sh "$dest" | cut -f1)
echo "done: $count wheels, $size in $dest"
