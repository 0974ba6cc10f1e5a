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

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import fixtures
import libvirt
import libvirt_qemu
from oslo_utils import units
import testscenarios

from snapdriver import exception
from snapdriver import qemu_img
from snapdriver import runner
from snapdriver.strategies import live_backup
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
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver.strategies import live_backup

uri, uuid, snapdir, mode = sys.argv[1:5]
conf.CONF([], project='nova')
conf.CONF.set_override('snapshots_directory', snapdir, group='libvirt')
conf.CONF.set_override('live_backup_mode', mode, group='snapdriver')
if len(sys.argv) > 5:
    qemu_img.QEMU_IMG = sys.argv[5]
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


#: Runs a test in each [snapdriver] live_backup_mode.
MODES = [('push', {'mode': 'push'}), ('pull', {'mode': 'pull'})]


class LiveBackupTestCase(base.DriverTestCase):

    #: [snapdriver] live_backup_mode of the test; the job handling tests
    #: below are about push mode's own job.
    mode = 'push'

    def setUp(self):
        super().setUp()
        self.flags(strategies=['live-backup'], live_backup_mode=self.mode,
                   group='snapdriver')

    def assert_no_backup_job(self, domain):
        self.assertFalse(backup_running(domain.dom),
                         'a backup job is left on the domain')
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                         domain.dom.jobInfo()[0])

    def make_big_domain(self):
        images = self.useFixture(real.DiskImages(**BIG_DISK))
        return self.make_domain('running', images=images)


class MatrixTestCase(LiveBackupTestCase):

    scenarios = testscenarios.multiply_scenarios(MODES, [
        ('%s-%s%s' % (state, fmt, '-compressed' if compress else ''),
         {'state': state, 'fmt': fmt, 'compress': compress})
        for state, fmt, compress in (
            ('running', 'qcow2', False),
            ('running', 'raw', False),
            ('paused', 'qcow2', False),
            ('paused', 'raw', False),
            ('running', 'qcow2', True),
        )
    ])

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

    scenarios = MODES

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
                 domain.uuid, self.snapshots_directory, 'push'],
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


def qemu_open_files(uuid):
    """Return the paths the QEMU process of domain ``uuid`` has open.

    Found independently of snapdriver: the process whose command line holds
    ``-uuid UUID``, then its /proc/PID/fd links (root only).
    """
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if b'-uuid' in argv and uuid.encode() in argv:
            fds = '/proc/%s/fd' % pid
            paths = set()
            for fd in os.listdir(fds):
                try:
                    paths.add(os.readlink(os.path.join(fds, fd)))
                except OSError:
                    pass
            return paths
    raise AssertionError('no QEMU process for domain %s' % uuid)


class TargetReleasedTestCase(LiveBackupTestCase):
    """The image is read only once QEMU has closed the backup target.

    Checked where snapdriver first reads the image after the job: the
    output check of a qcow2 output, which is the backup target itself.
    """

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("reading QEMU's /proc/PID/fd needs root")
        self.domain = self.make_domain('running')
        self.held_at_first_read = []
        real_check = runner.check_output

        def check_output(path, fmt, image_id=None):
            self.held_at_first_read.append(
                path in qemu_open_files(self.domain.uuid))
            return real_check(path, fmt, image_id)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.runner.check_output', check_output))

    def test_target_closed_before_it_is_read_stress(self):
        # libvirt 9.0 records the completed job before blockdev-del of the
        # target; a libvirt that reorders it is caught here.
        for i in range(10):
            self.snapshot(self.domain, image_id='image-%d' % i)
        self.assertEqual([False] * 10, self.held_at_first_read)
        self.assert_image_equals_disk('image-9', 'qcow2', self.domain)
        self.assert_no_backup_job(self.domain)

    def test_target_closed_late_is_waited_for(self):
        # A libvirt that reports the job done while QEMU still has the
        # target open: the test opens it in QEMU (read-only, as a node of
        # its own) when wait_done returns, and closes it a second later.
        dom = self.domain.dom
        real_wait_done = live_backup.wait_done
        closers = []

        def qmp(command, **arguments):
            return libvirt_qemu.qemuMonitorCommand(
                dom, json.dumps({'execute': command,
                                 'arguments': arguments}), 0)

        def wait_done(request, dom_, run):
            real_wait_done(request, dom_, run)
            target = os.path.join(
                [os.path.join(self.snapshots_directory, d) for d in
                 os.listdir(self.snapshots_directory)][0], 'image.qcow2')
            qmp('blockdev-add', **{
                'node-name': 'snapdriver-test-late', 'driver': 'qcow2',
                'read-only': True, 'file': {'driver': 'file',
                                            'filename': target}})
            self.assertIn(target, qemu_open_files(self.domain.uuid))
            closer = threading.Timer(1.0, qmp, ('blockdev-del',),
                                     {'node-name': 'snapdriver-test-late'})
            closer.start()
            closers.append(closer)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.strategies.live_backup.wait_done', wait_done))

        self.snapshot(self.domain)

        for closer in closers:
            closer.join(10)
        self.assertEqual(1, len(closers))
        self.assertEqual([False], self.held_at_first_read)
        self.assert_image_equals_disk('image-1', 'qcow2', self.domain)
        self.assert_no_backup_job(self.domain)


def slow_convert_qemu_img(directory):
    """A qemu-img whose ``convert`` sleeps 30 s (and nothing else does)."""
    path = os.path.join(directory, 'slow-convert-qemu-img')
    with open(path, 'w') as f:
        f.write('#!/bin/sh\ncase "$1" in convert) exec sleep 30;; esac\n'
                'exec qemu-img "$@"\n')
    os.chmod(path, 0o755)
    return path


class PullTestCase(LiveBackupTestCase):
    """What is particular to pull mode: the export, its end, its faults."""

    mode = 'pull'

    def test_export_read_from_the_work_directory_then_ended(self):
        domain = self.make_domain('running')
        real_convert = qemu_img.convert_from_nbd
        seen = {}

        def convert(uri, *args, **kwargs):
            # While qemu-img reads: the job runs, QEMU holds the scratch
            # file and listens on the socket, both in the work directory.
            scratch, = live_backup.running_backup_targets(domain.dom)
            workdir = os.path.dirname(scratch)
            sock = os.path.join(workdir, 'nbd', 'sock')
            seen.update(
                workdir=os.path.basename(workdir),
                held=scratch in qemu_open_files(domain.uuid),
                socket=stat_mode(sock), uri=uri,
                modes=(stat_mode(workdir), stat_mode(workdir + '/nbd')))
            return real_convert(uri, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.convert_from_nbd', convert))
        self.snapshot(domain)

        self.assertTrue(seen['workdir'].startswith(
            'snapdriver-%s-%s-' % (domain.uuid, runner.host_label())))
        self.assertTrue(seen['held'])
        self.assertTrue(stat.S_ISSOCK(seen['socket']))
        self.assertEqual((0o710, 0o730),
                         tuple(m & 0o7777 for m in seen['modes']))
        self.assertTrue(seen['uri'].startswith('nbd+unix:///vda?socket='))
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)
        # Work directory and any socket alias are gone, and QEMU closed
        # the scratch file before it was removed.
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual([], [p for p in qemu_open_files(domain.uuid)
                              if p.startswith(self.snapshots_directory)])

    def test_job_aborted_from_outside_fails_the_copy(self):
        domain = self.make_domain('running')
        real_convert = qemu_img.convert_from_nbd

        def abort_then_convert(*args, **kwargs):
            domain.dom.abortJob()
            return real_convert(*args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.convert_from_nbd', abort_then_convert))
        self.assertRaises(exception.QemuImgFailed, self.snapshot, domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)
        self.assertEqual({}, self.images.uploads)

    def test_timeout_aborts_the_job(self):
        self.flags(block_job_timeout=1, group='snapdriver')
        domain = self.make_domain('running')
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.QEMU_IMG',
            slow_convert_qemu_img(self.workdir)))
        t0 = time.monotonic()
        ex = self.assertRaises(exception.BlockJobTimeout, self.snapshot,
                               domain)
        self.assertIn('block_job_timeout', str(ex))
        self.assertLess(time.monotonic() - t0, 20)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)

    def _kill_mid_copy(self, domain):
        """Leave a pull job: SIGKILL a snapshot's process while it reads."""
        log_path = os.path.join(self.workdir, 'child.log')
        with open(log_path, 'wb') as log:
            child = subprocess.Popen(
                [sys.executable, '-c', _CHILD, real.LIBVIRT_URI,
                 domain.uuid, self.snapshots_directory, 'pull',
                 slow_convert_qemu_img(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        if not wait_for_backup(domain.dom):
            with open(log_path) as log:
                self.fail('the child never started a backup: %s' %
                          log.read())
        # The job exists once backupBegin returns in the child; its export
        # is read (here: never) after that.
        time.sleep(0.5)
        child.send_signal(signal.SIGKILL)
        child.wait()
        # A pull job never ends by itself.
        self.assertTrue(backup_running(domain.dom))
        self.assertNotEqual([], os.listdir(self.snapshots_directory))

    def test_stale_job_of_killed_process_is_aborted(self):
        domain = self.make_domain('running')
        self._kill_mid_copy(domain)
        logger = self.useFixture(fixtures.FakeLogger(
            name='snapdriver.runner'))

        self.snapshot(domain)

        self.assertIn('Cleaned up backup job onto %s' %
                      self.snapshots_directory, logger.output)
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_no_backup_job(domain)
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_service_start_ends_a_stale_job(self):
        # What nova-compute's init_host() runs after a kill.
        domain = self.make_domain('running')
        self._kill_mid_copy(domain)
        logger = self.useFixture(fixtures.FakeLogger(name='snapdriver'))

        self.driver._clean_snapshot_leftovers()

        self.assertIn('Cleaned up backup job onto %s' %
                      self.snapshots_directory, logger.output)
        self.assert_no_backup_job(domain)
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assert_guest_intact(domain, 'running')


def stat_mode(path):
    return os.lstat(path).st_mode
