#!/usr/bin/env bash
# Installs the TypeScript client's dependencies from the npm registry, then
# typechecks it, checks that the committed generated client matches the
# server's OpenAPI document, builds it and runs its tests.
#
# The live tests start `smolvm server` from SMOLVM_BIN, by default
# ../../target/debug/smolvm. They print `skipped: <reason>` and skip when
# the binary is missing, and the sandbox tests also skip without root, QEMU
# or the default image.
set -euo pipefail

# A relative SMOLVM_BIN names a path from the caller's directory.
if [[ -n "${SMOLVM_BIN:-}" ]]; then
  SMOLVM_BIN="$(realpath -m -- "$SMOLVM_BIN")"
  export SMOLVM_BIN
fi
cd "$(dirname "$0")"

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi

npm run typecheck

binary="${SMOLVM_BIN:-../../target/debug/smolvm}"
if [[ -x "$binary" ]]; then
  npm run check-generated
else
  snapshot=../../crates/smolvm-server/tests/snapshots/openapi.json
  echo "note: no smolvm binary at $binary; checking the generated client against $snapshot"
  node scripts/generate.mjs --check --input "$snapshot"
fi

npm run build
npm test
