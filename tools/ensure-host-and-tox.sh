#!/bin/bash
# Shared first step of tools/run-tests.sh and tools/run-demo.sh: the host
# parts (tools/setup-host.sh), then tox when it is missing.
set -eu
cd "$(dirname "$0")/.."

# The host parts first: every tox env builds libvirt-python, which needs
# libvirt-dev, pkg-config and gcc before tox installs anything.
if [ "$(id -u)" -eq 0 ]; then
    bash tools/setup-host.sh
else
    sudo bash tools/setup-host.sh
fi

if ! python3 -m tox --version >/dev/null 2>&1; then
    echo "ensure-host-and-tox: installing tox"
    python3 -m pip install --quiet 'tox>=4.6' ||
        python3 -m pip install --quiet --break-system-packages 'tox>=4.6'
fi
