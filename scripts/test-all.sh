#!/usr/bin/env bash
# Runs every bindwatch test on a fresh Debian 12 machine that has only Rust:
# installs what the tests need (promtool/prometheus, iproute2, kubernetes-validate),
# then lints and runs the whole suite. Needs root: the tests build real socket
# situations inside private network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --lib --bins --tests
