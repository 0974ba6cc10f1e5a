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

"""nova-compute SIGKILLed at a random instant of a snapshot, then restarted.

For each strategy and guest state it applies to, a child process builds
the real ``LibvirtSnapshotDriver`` and snapshots a real domain; the test
SIGKILLs it at a random instant across the whole call (the instants are
spread over one uninterrupted run's duration, measured first), then runs a
fresh driver's service-start recovery (``_clean_snapshot_leftovers``, what
``init_host`` runs) and checks: the guest is in its original power state,
persistent, without a managed save; its disk content equals the reference
and ``qemu-img check`` finds no corruption; no internal snapshot, block or
backup job, work directory or journal entry of ours is left; and the next
snapshot succeeds and its image equals the disk.

Each kill is classified by the last phase the child logged before it
died: ``preflight``, ``save``, ``capture``, ``restore``, ``upload``, or
``finished`` when the child ended before the kill.

``SNAPDRIVER_KILLS`` sets the kills per strategy and state (default 1, the
sample in the default functional run; ``tox -e kill`` runs 50 and prints
the table). ``SNAPDRIVER_KILL_SEED`` replays a run.
"""

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
import types

import libvirt
from nova.virt import fake as fake_virt
from oslo_utils import units
import testscenarios
from testtools import content

from snapdriver import conf
from snapdriver import driver
from snapdriver import journal
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real

load_tests = testscenarios.load_tests_apply_scenarios
CONF = conf.CONF

_MODULE = 'snapdriver.tests.functional.test_kill_anywhere'
KILLS = int(os.environ.get('SNAPDRIVER_KILLS', '1'))
SEED = int(os.environ.get('SNAPDRIVER_KILL_SEED', str(int(time.time()))))
#: Where ``tox -e kill`` collects the table.
RESULTS = os.environ.get('SNAPDRIVER_KILL_RESULTS')

#: (log text, phase): the child's last matching line says where it was.
PHASES = (
    ('Managed-saving', 'save'),
    ('Capture by', 'capture'),
    ('Restoring guest', 'restore'),
    ('beginning image upload', 'upload'),
    ('CHILD END', 'finished'),
)

CASES = [
    ('live-backup', 'running'), ('live-backup', 'paused'),
    ('live-shallow-rebase', 'running'), ('live-shallow-rebase', 'paused'),
    ('cold-direct-extract', 'running'), ('cold-direct-extract', 'paused'),
    ('cold-direct-extract', 'shutoff'),
    ('cold-internal', 'running'), ('cold-internal', 'paused'),
    ('cold-internal', 'shutoff'),
]


def _child(uuid, strategy, snapshots_directory, uploads_directory, log):
    """Be nova-compute: snapshot ``uuid`` once with ``strategy``."""
    import logging
    CONF([], project='nova')
    CONF.set_override('connection_uri', real.LIBVIRT_URI, 'libvirt')
    CONF.set_override('virt_type', 'kvm' if real.kvm_usable() else 'qemu',
                      'libvirt')
    CONF.set_override('snapshots_directory', snapshots_directory, 'libvirt')
    CONF.set_override('strategies', [strategy], 'snapdriver')
    # The parent test's lock path (DriverTestCase: beside the snapshots
    # directory), so that its service-start cleanup sees our lock.
    CONF.set_override('lock_path', os.path.join(
        os.path.dirname(snapshots_directory), 'locks'), 'oslo_concurrency')
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter('%(message)s'))
    root = logging.getLogger('snapdriver')
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    drv = driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(), False)
    drv._image_api = base.FakeImageService(uploads_directory)
    instance = base.DriverTestCase.make_instance(
        None, types.SimpleNamespace(uuid=uuid))
    with open(log, 'a') as f:
        f.write('CHILD START %f\n' % time.monotonic())
    drv.snapshot(None, instance, 'image-child', lambda **kw: None)
    with open(log, 'a') as f:
        f.write('CHILD END %f\n' % time.monotonic())


def _phase_of(log):
    try:
        with open(log) as f:
            lines = f.read().splitlines()
    except OSError:
        return 'preflight'
    phase = 'preflight'
    for line in lines:
        for text, name in PHASES:
            if text in line:
                phase = name
    return phase


class KillAnywhereTestCase(base.DriverTestCase):

    scenarios = [('%s-%s' % case, {'strategy': case[0], 'state': case[1]})
                 for case in CASES]

    def setUp(self):
        super().setUp()
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.images_fixture = self.useFixture(real.DiskImages(
            virtual_size=64 * units.Mi, data_size=16 * units.Mi))
        self.domain = self.make_domain(self.state,
                                       images=self.images_fixture)
        self.rng = random.Random('%s-%s-%d' % (self.strategy, self.state,
                                               SEED))
        self.table = collections.Counter()
        self.addDetail('seed', content.text_content(str(SEED)))
        self.addDetail('kills', content.Content(
            content.UTF8_TEXT,
            lambda: [json.dumps(sorted(self.table.items())).encode()]))

    def start_child(self, n):
        log = os.path.join(self.workdir, 'child-%d.log' % n)
        out = open(os.path.join(self.workdir, 'child-%d.out' % n), 'wb')
        self.addCleanup(out.close)
        child = subprocess.Popen(
            [sys.executable, '-m', _MODULE, self.domain.uuid, self.strategy,
             self.snapshots_directory, self.uploads_directory, log],
            stdout=out, stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.dirname(os.path.abspath(__file__))))))
        self.addCleanup(lambda: child.poll() is None and child.kill())
        deadline = time.monotonic() + 120
        while 'CHILD START' not in self._read(log):
            if child.poll() is not None:
                self.fail('child %d ended before its snapshot: %s' % (
                    n, self._read(out.name)[-3000:]))
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.005)
        return child, log

    @staticmethod
    def _read(path):
        try:
            with open(path, errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def calibrate(self):
        """Seconds an uninterrupted snapshot() call takes in a child."""
        child, log = self.start_child(0)
        self.assertEqual(0, child.wait(300), 'the calibration run failed')
        # CLOCK_MONOTONIC is one clock for every process of the host.
        marks = dict(line.split()[1:3] for line in
                     self._read(log).splitlines()
                     if line.startswith('CHILD '))
        took = float(marks['END']) - float(marks['START'])
        self.images.uploads.clear()
        for name in os.listdir(self.uploads_directory):
            os.unlink(os.path.join(self.uploads_directory, name))
        self.assert_clean()
        return took

    def assert_clean(self):
        """Original state, disk unchanged, nothing of ours left."""
        dom = self.domain
        self.assertEqual(self.state, dom.state())
        self.assertTrue(dom.is_persistent())
        self.assertFalse(dom.has_managed_save())
        force = self.state != 'shutoff'
        report = real.qemu_img_check(dom.disk_path, 'qcow2',
                                     force_share=force)
        self.assertEqual([], real.check_problems(report), report)
        self.assertEqual([], real.internal_snapshots(dom.disk_path,
                                                     force_share=force))
        self.assertTrue(real.images_equal(
            dom.disk_path, 'qcow2', self.images_fixture.reference_path,
            'raw', force_share=force), 'the disk content changed')
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual(set(), journal.uuids(), 'a journal entry is left')
        if self.state != 'shutoff':
            self.assertEqual({}, dom.dom.blockJobInfo('vda', 0),
                             'a block job is left')
            stats = dom.dom.jobStats(0)
            self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                             stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE),
                             'a job is left: %s' % stats)

    def test_killed_at_random(self):
        took = self.calibrate()
        for n in range(1, KILLS + 1):
            delay = self.rng.uniform(0, took * 1.1)
            child, log = self.start_child(n)
            time.sleep(delay)
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
                phase = _phase_of(log)
            else:
                phase = 'finished'
            # The service starts again.
            self.driver._clean_snapshot_leftovers()
            try:
                self.assert_clean()
                # The next snapshot works and is right.
                self.snapshot(self.domain, image_id='image-%d' % n)
                self.assert_image_equals_disk('image-%d' % n, 'qcow2',
                                              self.domain)
                self.assert_clean()
            except Exception:
                self.table[(phase, 'FAILED')] += 1
                self._record(took)
                raise
            self.table[(phase, 'recovered')] += 1
        self._record(took)
        self.assertEqual(KILLS, sum(self.table.values()))

    def _record(self, took):
        if not RESULTS:
            return
        with open(RESULTS, 'a') as f:
            f.write(json.dumps({
                'strategy': self.strategy, 'state': self.state,
                'seed': SEED, 'calibration_seconds': round(took, 2),
                'kills': [[p, o, c] for (p, o), c in
                          sorted(self.table.items())]}) + '\n')


if __name__ == '__main__':
    _child(*sys.argv[1:])
