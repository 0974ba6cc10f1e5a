#!/usr/bin/env python3
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Print the last stestr run as one line: 'LABEL: N passed, N failed, ...'.

The counts come from python-subunit's own ``subunit-stats``. They are also
appended to ``.stestr-summary`` so that tools/run-tests.sh can print the
totals of every suite at the end.
"""

import re
import subprocess
import sys


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else 'tests'
    stream = subprocess.run(['stestr', 'last', '--subunit'],
                            capture_output=True, check=True).stdout
    stats = subprocess.run(['subunit-stats'], input=stream,
                           capture_output=True).stdout.decode()
    counts = {}
    for key in ('Passed', 'Failed', 'Skipped'):
        match = re.search(r'%s tests:\s+(\d+)' % key, stats)
        counts[key] = int(match.group(1)) if match else 0
    print('%s: %d passed, %d failed, %d skipped' % (
        label, counts['Passed'], counts['Failed'], counts['Skipped']))
    with open('.stestr-summary', 'a') as f:
        f.write('%s %d %d %d\n' % (
            label, counts['Passed'], counts['Failed'], counts['Skipped']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
