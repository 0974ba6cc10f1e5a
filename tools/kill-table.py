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

"""Print the kill test's table: strategy x state, kills per phase and
outcome (from the JSON lines test_kill_anywhere.py appends)."""

import collections
import json
import sys

PHASES = ('preflight', 'save', 'capture', 'restore', 'upload', 'finished')


def main():
    path = sys.argv[1]
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(json.loads(line))
    if not rows:
        print('no kill results in %s' % path)
        return 1
    head = ['strategy', 'state'] + list(PHASES) + ['recovered', 'failed']
    print(' | '.join(head))
    print(' | '.join('---' for _ in head))
    total = collections.Counter()
    for row in rows:
        per_phase = collections.Counter()
        outcome = collections.Counter()
        for phase, result, count in row['kills']:
            per_phase[phase] += count
            outcome[result] += count
        total.update(outcome)
        print(' | '.join([row['strategy'], row['state']] +
                         [str(per_phase[p]) for p in PHASES] +
                         [str(outcome['recovered']),
                          str(outcome['FAILED'])]))
    print('kills: %d, recovered: %d, failed: %d (seed %s)' % (
        sum(total.values()), total['recovered'], total['FAILED'],
        rows[0]['seed']))
    return 1 if total['FAILED'] else 0


if __name__ == '__main__':
    sys.exit(main())
