# Shared by the scripts that install Python tools into a venv (sourced, not run).

# pins_installed PYTHON SPEC...: true when PYTHON exists and has every NAME==VERSION installed.
pins_installed() {
  local python="$1"
  shift
  [[ -x "${python}" ]] && "${python}" - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, wanted = spec.split("==")
    if version(name) != wanted:
        sys.exit(1)
PY
}

# venv_python3: prints a python3 that can create venvs, installing python3-venv when missing.
venv_python3() {
  local base
  base="$(command -v python3 || true)"
  if [[ -z "${base}" ]] || ! "${base}" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "installing python3-venv" >&2
    local sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3 python3-venv >/dev/null
    base="$(command -v python3)"
  fi
  echo "${base}"
}
