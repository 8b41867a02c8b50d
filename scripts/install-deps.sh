#!/usr/bin/env bash
# Installs the host packages smolvm needs: QEMU 10 from bookworm-backports,
# slirp4netns, debootstrap and the tools the image builder calls.
# Needs root (apt-get). Safe to run again.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: run as root (it calls apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
sources=/etc/apt/sources.list.d/debian.sources
backports=/etc/apt/sources.list.d/smolvm-backports.sources

# Derive the backports suite from the first stanza of the system's own
# sources file, so no mirror host name is written here.
if [[ ! -f $backports && -f $sources ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    awk 'BEGIN { RS = ""; ORS = "\n\n" } NR == 1 { print; exit }' "$sources" \
        | sed -E 's/^Suites:.*/Suites: bookworm-backports/' > "$backports"
fi

apt-get update -q
apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils
apt-get install -y -q --no-install-recommends \
    slirp4netns debootstrap e2fsprogs kmod dpkg-dev iproute2 procps \
    ca-certificates curl

# The TypeScript client's tests need Node.js 20 or later; use the host's
# when it has one, else Debian's.
if ! command -v node > /dev/null; then
    apt-get install -y -q --no-install-recommends nodejs npm
fi
