#!/usr/bin/env bash
# The chart tests: helm lint (strict), Kubernetes schema validation of every rendered object for
# the oldest and a current Kubernetes version, the real gateway binary on the rendered gateway.yaml
# and policy.yaml, and the chart's properties. No cluster, no helm binary needed.
#
#   helm/tests/run.sh [pytest arguments]
#
# The gateway binary is $EGRESS_GATEWAY_BIN, else target/debug/egress-gateway (relative paths are
# relative to the repository root). Python packages go into a virtualenv at $CHART_TEST_VENV,
# else target/chart-venv, reused while helm/tests/requirements.txt is unchanged.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

bin="${EGRESS_GATEWAY_BIN:-target/debug/egress-gateway}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "helm/tests/run.sh: no gateway binary at $bin" >&2
  echo "  build it first (cargo build -p egress-gateway), or set EGRESS_GATEWAY_BIN" >&2
  exit 2
fi
export EGRESS_GATEWAY_BIN="$bin"

# Debian's python3 has the venv module but not ensurepip until python3-venv is installed.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "helm/tests/run.sh: installing python3-venv" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

venv="${CHART_TEST_VENV:-$root/target/chart-venv}"
requirements="helm/tests/requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$want" >"$venv/.requirements.sha256"
fi

# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q helm/tests "$@"
