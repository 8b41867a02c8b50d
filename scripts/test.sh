#!/usr/bin/env bash
# Runs every check: format, lints, unit tests and the end-to-end tests
# that boot real sandboxes. Builds the static agent and the default image
# first (the image is cached, so later runs reuse it).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOLVM_PROFILE=dev scripts/build.sh
target/debug/smolvm image build

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
