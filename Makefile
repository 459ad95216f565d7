# The two commands of the README: `make demo` and `make test`.
# Builds share a target directory outside the clone, so a fresh clone reuses earlier builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cdp/target
export CDP_TANSU_BIN ?= $(HOME)/.cache/cdp/tansu/bin/tansu

PROFILES ?= 5000
SEED ?= 42

.PHONY: demo test deps tansu chart-tools chromium build fmt lint bench accuracy

## Generate a multi-source workload, resolve it and activate cohorts on the embedded bus; print the report.
demo: deps
	cargo run --release --bin cdp -- demo --profiles $(PROFILES) --seed $(SEED)

# The host's target triple, named explicitly for the lints and the tests: without `--target`,
# `cargo clippy` and `cargo test` resolve build scripts' dependencies differently, and the tests
# compiled RocksDB and librdkafka a second time (27 minutes of a cold run on 2 cores, against 4
# with `--target`); with it they share one build.
HOST_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')

## Formatting, lints and the whole test suite, including the Kafka-protocol broker tests.
test: deps tansu chart-tools chromium
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --target $(HOST_TARGET) -- -D warnings
	CDP_REQUIRE_KAFKA=1 CDP_REQUIRE_HELM=1 cargo test --workspace --target $(HOST_TARGET)

deps:
	@scripts/install-deps.sh

tansu:
	@scripts/install-tansu.sh

## Helm engine and Kubernetes schemas (Python venv) for the chart check in tests/deploy.rs.
chart-tools:
	@scripts/install-chart-tools.sh
	@scripts/install-duckdb.sh

## Debian's chromium for the identity console test in tests/console.rs.
chromium:
	@scripts/install-chromium.sh

build: deps
	cargo build --release --bin cdp

fmt:
	cargo fmt --all

## cdp's streaming matcher and Splink side by side on the FEBRL data sets (benches/accuracy).
accuracy: build
	@scripts/install-accuracy-tools.sh
	cd benches/accuracy && $(HOME)/.cache/cdp/accuracy-venv/bin/python3 run.py --cdp $(CARGO_TARGET_DIR)/release/cdp
