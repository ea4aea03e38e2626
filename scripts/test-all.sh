#!/usr/bin/env bash
# Runs every bindwatch test on a fresh Debian 12 machine that has only Rust:
# installs what the tests need (promtool/prometheus, iproute2, kubernetes-validate),
# then lints and runs the whole suite. Needs root: the tests build real socket
# situations inside private network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

# A one-shot run gains nothing from incremental caches, which would add gigabytes to
# target/; the free disk is printed so that a "No space left on device" is explained.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free for target/"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo doc (links checked)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
echo "== cargo test"
cargo test --lib --bins --tests
echo "== disk: target/ is $(du -sh target 2>/dev/null | cut -f1)"
