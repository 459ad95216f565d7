#!/usr/bin/env bash
# Installs DuckDB's Python package into the venv at $HOME/.cache/cdp/venv (or $CDP_CHART_VENV),
# the one the chart tools use, so tests/snapshot.rs can read `cdp snapshot`'s Parquet tables back
# the way analysts do. Idempotent: does nothing when the pinned version is there.
set -euo pipefail

duckdb="duckdb==2.0.0"
venv="${CDP_CHART_VENV:-${HOME}/.cache/cdp/venv}"
python="${venv}/bin/python3"

. "$(dirname "$0")/venv-lib.sh"

if pins_installed "${python}" "${duckdb}"; then
  echo "duckdb already installed in ${venv}"
  exit 0
fi

if [[ ! -x "${python}" ]]; then
  # The chart tools' script creates the venv (and installs python3-venv where it is missing).
  "$(dirname "$0")/install-chart-tools.sh"
fi

echo "installing ${duckdb} into ${venv}"
"${python}" -m pip install --quiet --disable-pip-version-check "${duckdb}"
pins_installed "${python}" "${duckdb}"
echo "duckdb installed in ${venv}"
