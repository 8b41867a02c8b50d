#!/usr/bin/env bash
# From a fresh machine to a running sandbox: installs the host packages,
# builds smolvm and the default Debian image, starts the HTTP API server,
# boots a sandbox through it and runs two commands in it. The server and
# the sandbox are left running for you to use.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${SMOLVM_PORT:-8000}
url=http://127.0.0.1:$port

bash scripts/install-deps.sh
scripts/build.sh
smolvm=$PWD/target/release/smolvm

"$smolvm" doctor || true
"$smolvm" image build

if ! curl -sf "$url/healthz" > /dev/null; then
    log=${TMPDIR:-/tmp}/smolvm-server.log
    nohup "$smolvm" server --port "$port" > "$log" 2>&1 &
    echo "started smolvm server (pid $!, log $log)"
    for _ in $(seq 100); do
        curl -sf "$url/healthz" > /dev/null && break
        sleep 0.1
    done
fi

# JSON field extraction without jq: python3 is part of the host setup.
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]], end="")' "$1"; }
post() { curl -sS -X POST "$url$1" -H 'content-type: application/json' -d "$2"; }

id=$(post /sandboxes '{}' | field id)
echo "sandbox $id is running"
post "/sandboxes/$id/exec" '{"command": "uname -a"}' | field stdout
post "/sandboxes/$id/exec" '{"command": "python3 --version"}' | field stdout

cat <<TXT

API docs:   $url/docs  (OpenAPI: $url/openapi.json)
CLI:        $smolvm sandbox exec $id -- 'cat /etc/os-release'
Delete:     curl -X DELETE $url/sandboxes/$id
TXT
