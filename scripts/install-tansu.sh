#!/usr/bin/env bash
# Installs the tansu broker (a Kafka-protocol broker with in-memory storage) that the Kafka
# tests of cdp-bus start on loopback. Idempotent: does nothing when the pinned version is
# already installed. The tests find it at $HOME/.cache/cdp/tansu/bin/tansu (or $CDP_TANSU_BIN).
set -euo pipefail

version="0.6.0"
root="${HOME}/.cache/cdp/tansu"
bin="${root}/bin/tansu"

if [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | grep -qw "${version}"; then
    echo "tansu ${version} already installed at ${bin}"
    exit 0
fi

echo "installing tansu ${version} into ${root} (takes several minutes)"
cargo install tansu --version "${version}" --locked --features dynostore --root "${root}"
"${bin}" --version
