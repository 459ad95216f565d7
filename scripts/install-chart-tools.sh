#!/usr/bin/env bash
# Installs the tools that check the Helm chart (scripts/check-chart.py) into a Python venv at
# $HOME/.cache/cdp/venv (or $CDP_CHART_VENV): helm-python-sdk, which bundles Helm's engine (lint
# and render, no helm binary), and kubernetes-validate, which validates manifests against the
# Kubernetes API schemas offline. Idempotent: does nothing when the pinned versions are there.
set -euo pipefail

helm_sdk="helm-python-sdk==0.2.2"
kube_validate="kubernetes-validate==1.37.0"
venv="${CDP_CHART_VENV:-${HOME}/.cache/cdp/venv}"
python="${venv}/bin/python3"

installed() {
  [[ -x "${python}" ]] && "${python}" - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, wanted = spec.split("==")
    if version(name) != wanted:
        sys.exit(1)
PY
}

if installed "${helm_sdk}" "${kube_validate}"; then
  echo "chart tools already installed in ${venv}"
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

echo "installing ${helm_sdk} and ${kube_validate} into ${venv}"
"${base}" -m venv "${venv}"
"${python}" -m pip install --quiet --disable-pip-version-check "${helm_sdk}" "${kube_validate}"
installed "${helm_sdk}" "${kube_validate}"
echo "chart tools installed in ${venv}"
