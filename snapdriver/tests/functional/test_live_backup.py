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

"""live-backup on a real domain: content, state, faults, leftovers.

The fault tests slow the real backup job down with
``virDomainBlockJobSetSpeed`` (libvirt applies it to the QEMU backup job of
the disk), so the job is reliably still running when a test aborts it,
times it out or kills the process that started it. QEMU starts up to 64
MiB of copies before the limit applies, hence a disk with 128 MiB of data
for those tests only.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import fixtures
import libvirt
from oslo_utils import units
import testscenarios

from snapdriver import exception
from snapdriver import qemu_img
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real

load_tests = testscenarios.load_tests_apply_scenarios

#: Backup speed once slowed down, in MiB/s.
SLOW_MIB_S = 1

#: A disk whose backup outlives QEMU's first burst of copies.
BIG_DISK = dict(virtual_size=256 * units.Mi, data_size=128 * units.Mi)

# The child process of the kill test: one live-backup snapshot of a domain
# through the runner, outside Nova, as the snapdriver CLI would take it.
_CHILD = """
import sys

import libvirt
from nova.virt.libvirt import guest as libvirt_guest

from snapdriver import conf
from snapdriver import guest_state
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver.strategies import live_backup

uri, uuid, snapdir = sys.argv[1:4]
conf.CONF([], project='nova')
conf.CONF.set_override('snapshots_directory', snapdir, group='libvirt')
guest = libvirt_guest.Guest(libvirt.open(uri).lookupByUUIDString(uuid))
request = snap_request.build(guest, image_format='qcow2')
strategy = live_backup.LiveBackup()
strategy.name = 'live-backup'
with runner.captured(request, strategy,
                     guest_state.LibvirtPowerControl(guest)):
    pass
"""


def backup_running(dom):
    try:
        dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    return True


def wait_for_backup(dom, timeout=60):
    deadline = time.monotonic() + timeout
    while not backup_running(dom):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


class LiveBackupTestCase(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.flags(strategies=['live-backup'], group='snapdriver')

    def assert_no_backup_job(self, domain):
        self.assertFalse(backup_running(domain.dom),
                         'a backup job is left on the domain')
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                         domain.dom.jobInfo()[0])

    def make_big_domain(self):
        images = self.useFixture(real.DiskImages(**BIG_DISK))
        return self.make_domain('running', images=images)


class MatrixTestCase(LiveBackupTestCase):

    scenarios = [
        ('%s-%s%s' % (state, fmt, '-compressed' if compress else ''),
         {'state': state, 'fmt': fmt, 'compress': compress})
        for state, fmt, compress in (
            ('running', 'qcow2', False),
            ('running', 'raw', False),
            ('paused', 'qcow2', False),
            ('paused', 'raw', False),
            ('running', 'qcow2', True),
        )
    ]

    def test_snapshot(self):
        self.flags(snapshot_image_format=self.fmt,
                   snapshot_compression=self.compress, group='libvirt')
        domain = self.make_domain(self.state)

        calls, sampler = self.snapshot(domain, sample=True)

        self.assert_task_states(calls)
        self.assert_image_equals_disk('image-1', self.fmt, domain)
        self.assert_guest_intact(domain, self.state)
        self.assert_no_backup_job(domain)
        # The guest never left its state and the domain was never
        # transient.
        self.assertGreater(sampler.samples, 0)
        self.assertEqual({self.state}, sampler.states)
        self.assertEqual(0, sampler.transient_samples)


class OtherDisksTestCase(LiveBackupTestCase):

    def test_other_disks_are_left_out(self):
        """Only the root disk is copied; libvirt accepts the exclusions."""
        images = self.useFixture(real.DiskImages())
        data = os.path.join(images.workdir, 'data.qcow2')
        qemu_img.create(data, 'qcow2', units.Mi)

        class TwoDisks(real.RealDomain):
            def _xml(self):
                return super()._xml().replace(
                    '<serial', "<disk type='file' device='disk'>"
                    "<driver name='qemu' type='qcow2'/>"
                    "<source file='%s'/><target dev='vdb' bus='virtio'/>"
                    "</disk>\n    <serial" % data, 1)

        domain = self.useFixture(TwoDisks(images=images))
        before = sorted(os.listdir(images.workdir))

        self.snapshot(domain)

        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        # libvirt would name a backup of vdb after its source, next to it.
        self.assertEqual(before, sorted(os.listdir(images.workdir)))


class FaultTestCase(LiveBackupTestCase):

    def test_job_aborted_from_outside(self):
        # A poll interval longer than the abort takes: the strategy finds
        # the job gone, not aborting, and must tell it from a success.
        self.flags(block_job_poll_interval=1.0, group='snapdriver')
        domain = self.make_big_domain()
        aborted = []

        def abort_when_seen():
            conn = libvirt.open(real.LIBVIRT_URI)
            try:
                dom = conn.lookupByUUIDString(domain.uuid)
                if wait_for_backup(dom):
                    dom.blockJobSetSpeed('vda', SLOW_MIB_S, 0)
                    dom.abortJob()
                    aborted.append(True)
            finally:
                conn.close()

        thread = threading.Thread(target=abort_when_seen, daemon=True)
        thread.start()
        try:
            self.assertRaises(exception.BlockJobFailed, self.snapshot,
                              domain)
        finally:
            thread.join(60)
        self.assertEqual([True], aborted)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)
        self.assertEqual({}, self.images.uploads)

    def test_timeout_aborts_the_job(self):
        self.flags(block_job_timeout=1, block_job_poll_interval=0.05,
                   group='snapdriver')
        domain = self.make_big_domain()
        begin = libvirt.virDomain.backupBegin

        def slow_backup_begin(dom, *args, **kwargs):
            ret = begin(dom, *args, **kwargs)
            dom.blockJobSetSpeed('vda', SLOW_MIB_S, 0)
            return ret

        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.backupBegin', slow_backup_begin))
        t0 = time.monotonic()
        ex = self.assertRaises(exception.BlockJobTimeout, self.snapshot,
                               domain)
        # The job was aborted at once, not left to run to its end (more
        # than 60 s at this speed).
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn('backup', str(ex))
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)

    def test_stale_job_of_killed_process_is_aborted(self):
        domain = self.make_big_domain()
        log_path = os.path.join(self.workdir, 'child.log')
        with open(log_path, 'wb') as log:
            child = subprocess.Popen(
                [sys.executable, '-c', _CHILD, real.LIBVIRT_URI,
                 domain.uuid, self.snapshots_directory],
                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        if not wait_for_backup(domain.dom):
            with open(log_path) as log:
                self.fail('the child never started a backup: %s' %
                          log.read())
        domain.dom.blockJobSetSpeed('vda', SLOW_MIB_S, 0)
        child.send_signal(signal.SIGKILL)
        child.wait()
        self.assertEqual(-signal.SIGKILL, child.returncode)
        # The job outlives the process that started it.
        self.assertTrue(backup_running(domain.dom))
        self.assertNotEqual([], os.listdir(self.snapshots_directory))
        logger = self.useFixture(fixtures.FakeLogger(
            name='snapdriver.runner'))

        self.snapshot(domain)

        self.assertIn('Cleaned up backup job onto %s' %
                      self.snapshots_directory, logger.output)
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)
