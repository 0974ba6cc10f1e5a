#!/bin/bash
# The project's test command (README "Run the tests"; .ci/run calls it).
#
# On a fresh Debian/Ubuntu machine it installs tox when missing, then runs
# pep8, the unit tests and the functional tests; the functional tox
# environment installs and starts the host parts itself
# (tools/setup-host.sh). Extra arguments replace the list of tox envs.
set -eu
cd "$(dirname "$0")/.."

bash tools/ensure-host-and-tox.sh

envs="${*:-pep8,py3,functional}"
rm -f .stestr-summary
rc=0
python3 -m tox -e "$envs" || rc=$?

if [ -f .stestr-summary ]; then
    awk '{p+=$2; f+=$3; s+=$4} END {printf "total: %d passed, %d failed, %d skipped\n", p, f, s}' .stestr-summary
fi
exit $rc
