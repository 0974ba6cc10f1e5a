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

"""tools/reaper.py: daemons started under a child subreaper."""

import os
import subprocess
import sys
import time

import fixtures
from oslotest import base

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      os.pardir, os.pardir, os.pardir, 'tools', 'reaper.py')

#: A daemon as ``libvirtd -d`` is one: it forks, its parent exits at once;
#: the child closes its standard streams, waits until it is an orphan and
#: writes down who its parent is now, then exits.
DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)
time.sleep(0.3)
ppid = os.getppid()
with open('/proc/%d/cmdline' % ppid, 'rb') as f:
    cmdline = f.read().split(b'\\0')
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write('%d %s' % (ppid, b' '.join(cmdline).decode()))
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
"""


def _state(pid):
    """The state letter of ``pid`` ('Z' for a zombie), or None if gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return None


class ReaperTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def reaper(self, *argv):
        return subprocess.run([sys.executable, REAPER] + list(argv),
                              capture_output=True, text=True, timeout=30)

    def test_orphans_become_its_children_and_it_ends_with_them(self):
        report = os.path.join(self.dir, 'parent')
        t0 = time.monotonic()
        done = self.reaper(sys.executable, '-c', DAEMON, report)
        self.assertEqual(0, done.returncode, done.stderr)
        # It returns once the command has, not when the daemon ends.
        self.assertLess(time.monotonic() - t0, 5)
        deadline = time.monotonic() + 20
        while not os.path.exists(report):
            self.assertLess(time.monotonic(), deadline, 'no report')
            time.sleep(0.05)
        with open(report) as f:
            ppid, cmdline = f.read().split(' ', 1)
        # The orphan's parent is the reaper, not PID 1.
        self.assertNotEqual('1', ppid)
        self.assertIn('reaper.py', cmdline)
        # Its last child gone (reaped), the reaper exits.
        deadline = time.monotonic() + 20
        while _state(int(ppid)) not in (None, 'Z'):
            self.assertLess(time.monotonic(), deadline,
                            'the reaper outlived its daemons')
            time.sleep(0.05)

    def test_a_failed_command_is_reported(self):
        done = self.reaper(sys.executable, '-c',
                           'import sys; sys.exit("no socket")', '--',
                           'true')
        self.assertEqual(1, done.returncode)
        self.assertIn('exited with 1: no socket', done.stderr)

    def test_a_missing_command_is_reported(self):
        done = self.reaper(os.path.join(self.dir, 'no-such-daemon'), '-d')
        self.assertEqual(1, done.returncode)
        self.assertIn('no-such-daemon', done.stderr)

    def test_nothing_to_start(self):
        done = self.reaper('--')
        self.assertNotEqual(0, done.returncode)
        self.assertIn('Usage', done.stderr)
