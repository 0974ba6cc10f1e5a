#!/bin/bash
# The project's main job (README "See it work"): on a fresh Debian/Ubuntu
# machine, installs tox when missing and runs "tox -e demo", which installs
# the host parts (tools/setup-host.sh --profile box), brings up a compute
# host in a box on 127.0.0.1 (Keystone, RabbitMQ, placement, Glance, Nova
# with LibvirtSnapshotDriver), boots a writing guest through the API,
# runs "openstack server image create --wait" with each strategy that
# applies, boots a clone of each snapshot, reads the data back in it, and
# removes everything.
set -eu
cd "$(dirname "$0")/.."

bash tools/ensure-host-and-tox.sh
exec python3 -m tox -e demo -- "$@"
