#!/usr/bin/env bash
# Installs the system packages cdp's build needs when they are missing (Debian/Ubuntu):
# libclang for RocksDB's bindings, a C/C++ toolchain for RocksDB and librdkafka, and OpenSSL
# headers for librdkafka's TLS and SASL/SCRAM.
set -euo pipefail

missing=()
for pkg in libclang-dev clang g++ make pkg-config libssl-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
