#!/bin/bash
# The project's main job (README "See it work"): on a fresh Debian/Ubuntu
# machine, installs tox when missing and runs "tox -e demo", which installs
# the host parts (tools/setup-host.sh), starts a real Glance API on
# 127.0.0.1, snapshots a throwaway domain with every strategy in every
# guest state it applies to through LibvirtSnapshotDriver.snapshot(),
# downloads each image back from Glance and verifies it.
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
    echo "run-demo: installing tox"
    python3 -m pip install --quiet 'tox>=4.6' ||
        python3 -m pip install --quiet --break-system-packages 'tox>=4.6'
fi
exec python3 -m tox -e demo -- "$@"
