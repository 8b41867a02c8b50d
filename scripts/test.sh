#!/usr/bin/env bash
# Runs every check: format, lints, unit tests, the end-to-end tests that
# boot real sandboxes, and the TypeScript client's tests. Builds the
# static agent and the default image first (the image is cached, so later
# runs reuse it).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOLVM_PROFILE=dev scripts/build.sh
target/debug/smolvm image build

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
clients/typescript/test.sh
