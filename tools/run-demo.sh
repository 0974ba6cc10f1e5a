#!/bin/bash
# The project's main job (README "See it work"): on a fresh Debian/Ubuntu
# machine, installs tox when missing and runs "tox -e demo", which installs
# the host parts (tools/setup-host.sh), starts a real Glance API on
# 127.0.0.1, snapshots a throwaway domain with every strategy in every
# guest state it applies to through LibvirtSnapshotDriver.snapshot(),
# downloads each image back from Glance and verifies it.
set -eu
cd "$(dirname "$0")/.."

bash tools/ensure-host-and-tox.sh
exec python3 -m tox -e demo -- "$@"
