#!/usr/bin/env bash
# Install the Debian packages listed in scripts/apt-packages.txt.
#
# Idempotent and quick when nothing is missing: dpkg is asked first, and
# `apt-get update` + `apt-get install` only run for packages that are absent,
# so CI on an already provisioned machine spends well under a second here.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="${1:-$here/apt-packages.txt}"

if [[ ! -r "$list" ]]; then
    echo "install-deps: cannot read package list $list" >&2
    exit 1
fi

# Strip comments and blank lines.
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$list")

missing=()
for pkg in "${wanted[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#wanted[@]} apt packages already installed"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-deps: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as docker.io, containerd and docker-registry start their
# services when installed (docker0, iptables rules, a registry on :5000). The
# tests start private instances of each, so the host's must stay off: a
# policy-rc.d that answers 101 ("action forbidden") stops invoke-rc.d and
# deb-systemd-invoke from starting anything during this install. An existing
# policy-rc.d is the administrator's and is left alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# nsbox install-deps: no service starts while it installs\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
