#!/usr/bin/env bash
# From a fresh machine to a running sandbox: installs the host packages,
# builds smolvm and the default Debian image, boots a sandbox and runs
# two commands in it. The sandbox is left running for you to use.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
scripts/build.sh
smolvm=target/release/smolvm

"$smolvm" doctor || true
"$smolvm" image build
id=$("$smolvm" sandbox create)
echo "sandbox $id is running"
"$smolvm" sandbox exec "$id" -- uname -a
"$smolvm" sandbox exec "$id" -- python3 --version

cat <<TXT

Try:  $smolvm sandbox exec $id -- 'ls / && cat /etc/os-release'
Then: $smolvm sandbox delete $id
TXT
