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

. "$(dirname "$0")/venv-lib.sh"

if pins_installed "${python}" "${helm_sdk}" "${kube_validate}"; then
  echo "chart tools already installed in ${venv}"
  exit 0
fi

base="$(venv_python3)"
echo "installing ${helm_sdk} and ${kube_validate} into ${venv}"
"${base}" -m venv "${venv}"
"${python}" -m pip install --quiet --disable-pip-version-check "${helm_sdk}" "${kube_validate}"
pins_installed "${python}" "${helm_sdk}" "${kube_validate}"
echo "chart tools installed in ${venv}"
