#!/bin/bash
# The project's test command (README "Run the tests"; .ci/run calls it).
#
# On a fresh Debian/Ubuntu machine it installs tox when missing, then runs
# pep8, the unit tests, the functional tests and the scenario tests on the
# Nova box; the functional and box-scenario tox environments install and
# start the host parts themselves (tools/setup-host.sh, --profile box for
# RabbitMQ and MariaDB). Extra arguments replace the list of tox envs.
set -eu
cd "$(dirname "$0")/.."

bash tools/ensure-host-and-tox.sh

envs="${*:-pep8,py3,functional,box-scenario}"
rm -f .stestr-summary
rc=0
python3 -m tox -e "$envs" || rc=$?

if [ -f .stestr-summary ]; then
    awk '{p+=$2; f+=$3; s+=$4} END {printf "total: %d passed, %d failed, %d skipped\n", p, f, s}' .stestr-summary
fi
exit $rc
