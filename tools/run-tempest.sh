#!/bin/bash
# tempest against the compute host in a box (README "tempest on the box"):
# on a fresh Debian/Ubuntu machine, installs tox when missing and runs
# "tox -e tempest", which installs the host parts (tools/setup-host.sh
# --profile box) and tempest 47, starts a box of its own in a new directory
# under /var/tmp, creates a disk-1 flavor as the box's admin, writes
# tempest.conf from the box's state, runs
#   tempest run --regex '^tempest\.api\.compute\.images' --concurrency 1
# (another regex as the first argument), prints the counts and removes the
# box, whatever happened.
set -eu
cd "$(dirname "$0")/.."

bash tools/ensure-host-and-tox.sh
exec python3 -m tox -e tempest -- "$@"
