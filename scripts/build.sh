#!/usr/bin/env bash
# Builds the host binaries (release) and the static guest agent.
# The agent is built for an explicit --target so that the static-linking
# flag applies to it alone, not to build scripts or proc macros.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
profile=${SMOLVM_PROFILE:-release}

cargo build --profile "$profile" --workspace --exclude smolvm-agent
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile agent -p smolvm-agent --target "$target"

# Put the agent beside the CLI, where the image builder looks first.
out=target/$profile
[[ $profile == dev ]] && out=target/debug
# Copy then rename, so a running agent binary (tests in socket mode) does
# not make the copy fail with "text file busy".
cp "target/$target/agent/smolvm-agent" "$out/.smolvm-agent.tmp"
mv -f "$out/.smolvm-agent.tmp" "$out/smolvm-agent"
echo "built $out/smolvm and $out/smolvm-agent"
