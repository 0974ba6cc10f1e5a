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

"""Faults and bad input, injected on the real host.

Whatever fails, the guest ends in the power state it had and stays
persistent, its disk is unchanged, nothing of ours is left (internal
snapshot, overlay, work directory, managed-save image, block job), the
error is a specific type whose message says what to do, and a log line
names the instance. doc/source/faults.rst lists the matrix.

Faults are injected at the boundaries, never inside snapdriver: qemu-img
is replaced by a wrapper script that runs the real one except for the
faulted subcommand; libvirt block jobs are slowed, aborted or their domain
destroyed from another connection; the compute process is SIGKILLed.
"""

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import types

import fixtures
import libvirt
from nova import exception as nova_exception
import nova.privsep as nova_privsep
from nova.virt import fake as fake_virt
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_utils import units
import testscenarios
from testtools import matchers

from snapdriver import conf
from snapdriver import driver
from snapdriver import exception
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real

load_tests = testscenarios.load_tests_apply_scenarios

CONF = conf.CONF

LIVE = 'live-shallow-rebase'
BACKUP = 'live-backup'
DIRECT = 'cold-direct-extract'
INTERNAL = 'cold-internal'
INSTALLED = (INTERNAL, DIRECT, LIVE, 'stock')

# Run as the child processes of KilledComputeTestCase, from the top of the
# source tree.
_MODULE = 'snapdriver.tests.functional.test_faults'
_TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))

# The wrapper runs as its own process; every path in it is absolute, so it
# does not depend on the PATH qemu-img is run with.
_WRAPPER = """#!%(python)s
import json
import os
import signal
import socket
import sys
import time

SUBCOMMAND = %(subcommand)r
MATCH = %(match)r
MODE = %(mode)r

args = sys.argv[1:]
dirs = {}
for arg in args:
    if arg.startswith(%(snapdir)r + os.sep):
        parent = os.path.dirname(arg)
        if os.path.isdir(parent):
            dirs[parent] = os.stat(parent).st_mode
with open(%(log)r, 'a') as log:
    log.write(json.dumps({'argv': args, 'dirs': dirs,
                          'time': time.time()}) + '\\n')
if args and args[0] == SUBCOMMAND and (MATCH is None or MATCH in args):
    if MODE == 'fail':
        if args[0] == 'convert':
            # Half an output, as a convert that died mid-way leaves it.
            with open(args[-1], 'wb') as out:
                out.write(b'\\xff' * 65536)
        sys.stderr.write('qemu-img: injected failure\\n')
        sys.exit(1)
    if MODE == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    if MODE == 'hang':
        time.sleep(600)
    if MODE == 'delay':
        time.sleep(1)
os.execv(%(real)r, [%(real)r] + args)
"""

_real_block_copy = libvirt.virDomain.blockCopy


def _slow_block_copy(self, disk, destxml, params=None, flags=0):
    """virDomain.blockCopy at 1 byte/s: the mirror is never ready.

    Seen on QEMU 7.2: the job copies its first 1 MiB, then waits.
    """
    params = dict(params or {})
    params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = 1
    return _real_block_copy(self, disk, destxml, params, flags)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


class JobWatcher(threading.Thread):
    """Waits, on its own connection, for a block job on ``vda``; then
    records the modes of the work directories and runs ``action(dom)``.
    """

    def __init__(self, uuid, snapshots_directory, action, timeout=60):
        super().__init__(daemon=True)
        self.uuid = uuid
        self.snapshots_directory = snapshots_directory
        self.action = action
        self.timeout = timeout
        self.job = None
        self.modes = {}
        self.error = None

    def run(self):
        conn = libvirt.open(real.LIBVIRT_URI)
        try:
            dom = conn.lookupByUUIDString(self.uuid)
            deadline = time.monotonic() + self.timeout
            while not self.job and time.monotonic() < deadline:
                self.job = dom.blockJobInfo('vda', 0)
                time.sleep(0.01)
            for entry in os.listdir(self.snapshots_directory):
                path = os.path.join(self.snapshots_directory, entry)
                self.modes[path] = os.stat(path).st_mode
            if self.job:
                self.action(dom)
        except Exception as e:
            self.error = e
        finally:
            conn.close()


class FaultTestCase(base.DriverTestCase):
    """DriverTestCase plus the tools to inject faults and check the log."""

    def setUp(self):
        super().setUp()
        self.records = _Records()
        self.useFixture(fixtures.LogHandler(
            self.records, name='snapdriver', level=logging.DEBUG,
            nuke_handlers=False))
        self.qemu_img_log = os.path.join(self.workdir, 'qemu-img.log')

    def inject(self, subcommand=None, mode=None, match=None):
        """Point snapdriver at a qemu-img wrapper that logs every call and
        fails ``subcommand`` (holding ``match``) as ``mode`` says:
        ``fail`` (exit 1), ``kill`` (SIGKILL), ``hang`` or ``delay`` (1 s).
        """
        script = os.path.join(self.workdir, 'qemu-img-wrapper')
        with open(script, 'w') as f:
            f.write(_WRAPPER % {
                'python': sys.executable, 'real': shutil.which('qemu-img'),
                'log': self.qemu_img_log, 'snapdir': self.snapshots_directory,
                'subcommand': subcommand, 'match': match, 'mode': mode})
        os.chmod(script, 0o700)
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.QEMU_IMG', script))

    def qemu_img_calls(self):
        with open(self.qemu_img_log) as f:
            return [json.loads(line) for line in f]

    def slow_block_copy(self):
        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.blockCopy', _slow_block_copy))

    def snapshot_fails(self, domain, exc_type, *fragments, **kwargs):
        """Run a snapshot that must fail; return (exception, sampler)."""
        sampler = base.StateSampler(domain.uuid)
        sampler.start()
        try:
            exc = self.assertRaises(exc_type, self.snapshot, domain,
                                    **kwargs)
        finally:
            sampler.stop()
        for fragment in fragments:
            self.assertIn(fragment, str(exc))
        self.assertNotIn(kwargs.get('image_id', 'image-1'),
                         self.images.uploads)
        return exc, sampler

    # Assertions

    def assert_logged(self, domain, text, level=logging.WARNING):
        """A log line of at least ``level`` names the instance."""
        for record in self.records.records:
            # NOTE: oslo.log's ContextFormatter, when another handler
            # uses it, replaces the Instance with '[instance: UUID] '.
            instance = getattr(record, 'instance', None)
            named = str(getattr(instance, 'uuid', instance) or '')
            if (record.levelno >= level and domain.uuid in named and
                    text in record.getMessage()):
                return record
        self.fail('no %s log line naming instance %s holds %r; got %s' % (
            logging.getLevelName(level), domain.uuid, text,
            [r.getMessage() for r in self.records.records]))

    def assert_message(self, *fragments):
        """A log line (naming an instance or not) holds every fragment."""
        messages = [r.getMessage() for r in self.records.records]
        for message in messages:
            if all(f in message for f in fragments):
                return
        self.fail('no log line holds all of %r; got %s'
                  % (fragments, messages))

    def assert_never_left(self, sampler, state):
        self.assert_sampled_throughout(sampler)
        self.assertEqual({state}, sampler.states)
        self.assertEqual(0, sampler.transient_samples)

    def assert_qemu_img_calls_safe(self):
        """Every call named the format; every work directory was private."""
        calls = self.qemu_img_calls()
        self.assertNotEqual([], calls)
        for call in calls:
            argv = call['argv']
            if argv[0] == 'snapshot':
                # qemu-img snapshot has no -f: the format goes in the
                # image options.
                self.assertIn('--image-opts', argv)
                self.assertThat(argv[-1], matchers.StartsWith('driver='))
            else:
                self.assertIn('-f', argv)
            for path, mode in call['dirs'].items():
                self.assert_private(path, mode)

    def assert_private(self, path, mode):
        self.assertTrue(stat.S_ISDIR(mode))
        self.assertEqual(stat.S_IRWXU, mode & stat.S_IRWXU)
        self.assertEqual(0, mode & (stat.S_IRWXO | stat.S_IRGRP |
                                    stat.S_IWGRP),
                         '%s has mode %o' % (path, mode))

    def assert_nothing_left(self, domain):
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual([], real.internal_snapshots(
            domain.disk_path, force_share=domain.state() != 'shutoff'))


_QEMU_IMG_FAULTS = [
    # (strategy, state, output format, subcommand, match, mode,
    #  [snapdriver] live_backup_mode)
    (LIVE, 'running', 'qcow2', 'rebase', None, 'fail', None),
    (LIVE, 'running', 'raw', 'convert', None, 'kill', None),
    (LIVE, 'paused', 'qcow2', 'rebase', None, 'hang', None),
    # push: the backup target, then its conversion to raw, fails.
    (BACKUP, 'running', 'raw', 'convert', None, 'fail', 'push'),
    (BACKUP, 'paused', 'raw', 'convert', None, 'hang', 'push'),
    # pull: qemu-img's read of the job's export fails; a hung read is
    # bounded by the job's timeout.
    (BACKUP, 'running', 'qcow2', 'convert', None, 'fail', 'pull'),
    (BACKUP, 'paused', 'raw', 'convert', None, 'kill', 'pull'),
    (BACKUP, 'running', 'qcow2', 'convert', None, 'hang', 'pull'),
    (DIRECT, 'running', 'qcow2', 'convert', None, 'fail', None),
    (DIRECT, 'paused', 'raw', 'convert', None, 'kill', None),
    (DIRECT, 'shutoff', 'qcow2', 'convert', None, 'hang', None),
    (INTERNAL, 'running', 'qcow2', 'convert', None, 'fail', None),
    (INTERNAL, 'shutoff', 'raw', 'convert', None, 'kill', None),
    (INTERNAL, 'running', 'raw', 'convert', None, 'hang', None),
    (INTERNAL, 'paused', 'qcow2', 'snapshot', '-c', 'fail', None),
]

_EXPECTED = {
    'fail': (exception.QemuImgFailed, 'injected failure'),
    'kill': (exception.QemuImgFailed, 'killed by signal SIGKILL'),
    'hang': (exception.QemuImgTimeout, 'qemu_img_timeout'),
    # The pull-mode read is the job's copy: bounded by the job's timeout.
    'pull-hang': (exception.BlockJobTimeout, 'block_job_timeout'),
}


class QemuImgFaultTestCase(FaultTestCase):
    """qemu-img fails, is killed, or hangs in the middle of a snapshot."""

    scenarios = [
        ('%s-%s-%s-%s-%s%s' % (c[0], c[1], c[2], c[3], c[5],
                               '-' + c[6] if c[6] else ''),
         {'strategy': c[0], 'state': c[1], 'fmt': c[2], 'subcommand': c[3],
          'match': c[4], 'mode': c[5], 'backup_mode': c[6]})
        for c in _QEMU_IMG_FAULTS
    ]

    def test_fault(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.flags(snapshot_image_format=self.fmt, group='libvirt')
        if self.backup_mode:
            self.flags(live_backup_mode=self.backup_mode, group='snapdriver')
        if self.subcommand == 'rebase':
            # The in-place flatten is the one that runs qemu-img rebase.
            self.flags(live_flatten='in-place', group='snapdriver')
        expected = self.mode
        if self.mode == 'hang':
            self.flags(qemu_img_timeout=2, group='snapdriver')
            if self.backup_mode == 'pull':
                self.flags(block_job_timeout=2, group='snapdriver')
                expected = 'pull-hang'
        self.inject(self.subcommand, self.mode, self.match)
        domain = self.make_domain(self.state)
        exc_type, fragment = _EXPECTED[expected]

        # The error names the failed command; a timed out job names the
        # job ("The backup job of disk ...").
        fragments = (fragment, 'backup job' if expected == 'pull-hang'
                     else self.subcommand)
        t0 = time.monotonic()
        self.snapshot_fails(domain, exc_type, *fragments)

        if self.mode == 'hang':
            # Killed at the timeout, not after the 600 s sleep.
            self.assertLess(time.monotonic() - t0, 60)
        self.assert_guest_intact(domain, self.state)
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)
        self.assert_qemu_img_calls_safe()
        faulted = [c for c in self.qemu_img_calls()
                   if c['argv'][0] == self.subcommand]
        self.assertNotEqual([], faulted, 'the fault was never injected')


class SpaceTestCase(FaultTestCase):
    """The preflight refuses before the guest is touched."""

    scenarios = [(s, {'strategy': s})
                 for s in (LIVE, BACKUP, DIRECT, INTERNAL)]

    def test_margin_larger_than_the_filesystem(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.flags(free_space_margin_mb=10 ** 9, group='snapdriver')
        domain = self.make_domain('running')

        _exc, sampler = self.snapshot_fails(
            domain, exception.InsufficientSnapshotSpace,
            self.snapshots_directory, 'free_space_margin_mb of 1000000000',
            'The guest was not touched')

        # A cold strategy never managed-saved the guest.
        self.assert_never_left(sampler, 'running')
        self.assert_guest_intact(domain, 'running')
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)


#: CAP_SYS_ADMIN, the capability mount(2) needs (linux/capability.h).
_CAP_SYS_ADMIN = 21


def _tmpfs_unavailable_reason():
    """Tell why this host cannot mount a tmpfs, or None when it can.

    Only a missing capability is a reason: not root, no CAP_SYS_ADMIN (an
    unprivileged container), no tmpfs in the kernel, no mount command.
    """
    if os.geteuid() != 0:
        return 'mounting a tmpfs needs root'
    with open('/proc/self/status') as f:
        caps = dict(line.split(':', 1) for line in f if ':' in line)
    if not int(caps['CapEff'].strip(), 16) >> _CAP_SYS_ADMIN & 1:
        return 'mounting a tmpfs needs CAP_SYS_ADMIN, which this host lacks'
    with open('/proc/filesystems') as f:
        if 'tmpfs' not in f.read().split():
            return 'the kernel has no tmpfs'
    if shutil.which('mount') is None:
        return 'the mount command is not installed'
    return None


class SmallFilesystemTestCase(FaultTestCase):
    """A real 8 MiB filesystem: 64 MiB raw cannot fit, 4 MiB qcow2 can."""

    def setUp(self):
        super().setUp()
        reason = _tmpfs_unavailable_reason()
        if reason:
            self.skipTest(reason)
        small = os.path.join(self.workdir, 'small')
        os.mkdir(small, 0o711)
        # The host can mount a tmpfs: any failure now is a test failure.
        real._execute('mount', '-t', 'tmpfs', '-o', 'size=8m,mode=0711',
                      'snapdriver-test', small)
        self.addCleanup(real._execute, 'umount', '-l', small)
        self.snapshots_directory = small
        self.flags(snapshots_directory=small, group='libvirt')
        self.flags(free_space_margin_mb=0, strategies=[LIVE],
                   group='snapdriver')

    def test_raw_output_does_not_fit(self):
        self.flags(snapshot_image_format='raw', group='libvirt')
        domain = self.make_domain('running')

        self.snapshot_fails(domain, exception.InsufficientSnapshotSpace,
                            'needs 6', '[libvirt] snapshots_directory')

        self.assert_guest_intact(domain, 'running')

        # The same guest, with an output that fits, is snapshotted there.
        self.flags(snapshot_image_format='qcow2', group='libvirt')
        self.snapshot(domain, image_id='image-2')
        self.assert_image_equals_disk('image-2', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')


class StaleWorkdirSpaceTestCase(FaultTestCase):
    """A stale work directory of the instance fills the snapshots
    filesystem: it is removed before the free space is measured.
    """

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('mounting a tmpfs needs root')
        small = os.path.join(self.workdir, 'small')
        os.mkdir(small, 0o711)
        real._execute('mount', '-t', 'tmpfs', '-o', 'size=16m,mode=0711',
                      'snapdriver-test', small)
        self.addCleanup(real._execute, 'umount', '-l', small)
        self.snapshots_directory = small
        self.flags(snapshots_directory=small, group='libvirt')
        self.flags(free_space_margin_mb=0, strategies=[DIRECT],
                   group='snapdriver')

    def test_stale_workdir_removed_before_the_space_check(self):
        domain = self.make_domain('shutoff')
        # What a killed snapshot of this instance left: 15 of 16 MiB.
        stale = os.path.join(self.snapshots_directory, '%s%s-%s-stale' % (
            qemu_img.NAME_PREFIX, domain.uuid, CONF.host))
        os.mkdir(stale, 0o700)
        with open(os.path.join(stale, 'image.qcow2'), 'wb') as f:
            f.write(b'\xa5' * 15 * units.Mi)

        self.snapshot(domain)

        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'shutoff')
        self.assert_logged(domain, 'Removed work directory %s' % stale)


class _StopsAfterTheFacts(object):
    """snapdriver.request.build, then the guest shuts itself down (seen
    from another libvirt connection) before anything else happens.
    """

    def __init__(self, uuid):
        self.uuid = uuid
        self.real_build = snap_request.build

    def __call__(self, *args, **kwargs):
        request = self.real_build(*args, **kwargs)
        conn = libvirt.open(real.LIBVIRT_URI)
        try:
            conn.lookupByUUIDString(self.uuid).destroy()
        finally:
            conn.close()
        return request


class GuestStopsBeforeTheSaveTestCase(FaultTestCase):

    def test_guest_stopped_before_the_managed_save_stays_off(self):
        self.flags(strategies=[DIRECT], group='snapdriver')
        domain = self.make_domain('running')
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.request.build', _StopsAfterTheFacts(domain.uuid)))

        self.snapshot_fails(domain, exception.GuestStoppedDuringSnapshot,
                            domain.uuid)

        # Nobody but the guest decided it should be off: the restore must
        # not boot it.
        self.assert_guest_intact(domain, 'shutoff')


class _RecordingSemaphore(object):
    """Nova's disk_ops_semaphore ([compute] max_concurrent_disk_ops = 1)
    that knows whether it is held.
    """

    def __init__(self):
        self._sem = threading.Semaphore(1)
        self.holders = 0

    def __enter__(self):
        self._sem.acquire()
        self.holders += 1

    def __exit__(self, *exc):
        self.holders -= 1
        self._sem.release()


class _RecordingImageService(base.FakeImageService):

    def __init__(self, directory, semaphore, record):
        super().__init__(directory)
        self.semaphore = semaphore
        self.record = record

    def update(self, context, image_id, metadata, data=None, **kwargs):
        if data is not None:
            self.record.append(('upload', self.semaphore.holders))
        return super().update(context, image_id, metadata, data, **kwargs)


class DiskOpsSemaphoreTestCase(FaultTestCase):
    """Every data copy holds Nova's compute_utils.disk_ops_semaphore, as
    the stock driver's conversions and upload do.
    """

    scenarios = [
        ('live-convert', {'strategy': LIVE, 'state': 'running',
                          'fmt': 'raw', 'flatten': 'convert'}),
        ('live-in-place', {'strategy': LIVE, 'state': 'running',
                           'fmt': 'qcow2', 'flatten': 'in-place'}),
        ('backup', {'strategy': BACKUP, 'state': 'running', 'fmt': 'raw',
                    'flatten': 'auto'}),
        ('direct', {'strategy': DIRECT, 'state': 'paused', 'fmt': 'qcow2',
                    'flatten': 'auto'}),
        ('internal', {'strategy': INTERNAL, 'state': 'shutoff',
                      'fmt': 'qcow2', 'flatten': 'auto'}),
    ]

    def test_every_copy_holds_the_semaphore(self):
        self.flags(strategies=[self.strategy], live_flatten=self.flatten,
                   group='snapdriver')
        self.flags(snapshot_image_format=self.fmt, group='libvirt')
        domain = self.make_domain(self.state)
        semaphore = _RecordingSemaphore()
        record = []
        self.useFixture(fixtures.MonkeyPatch(
            'nova.compute.utils.disk_ops_semaphore', semaphore))
        self.images = _RecordingImageService(self.uploads_directory,
                                             semaphore, record)
        self.driver._image_api = self.images
        real_execute = processutils.execute

        def execute(*cmd, **kwargs):
            copies = [a for a in ('convert', 'rebase') if a in cmd]
            if copies:
                record.append(('qemu-img ' + copies[0], semaphore.holders))
            return real_execute(*cmd, **kwargs)

        def job(name, real_call):
            def call(dom, *args, **kwargs):
                record.append((name, semaphore.holders))
                return real_call(dom, *args, **kwargs)
            return call

        self.useFixture(fixtures.MonkeyPatch(
            'oslo_concurrency.processutils.execute', execute))
        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.blockCopy',
            job('blockCopy', libvirt.virDomain.blockCopy)))
        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.backupBegin',
            job('backupBegin', libvirt.virDomain.backupBegin)))

        self.snapshot(domain)

        self.assert_image_equals_disk('image-1', self.fmt, domain)
        self.assertIn(('upload', 1), record)
        copies = [name for name, _held in record if name != 'upload']
        self.assertNotEqual([], copies)
        self.assertEqual([(name, 1) for name, _held in record], record)
        self.assertEqual(0, semaphore.holders)


class NonRootComputeTestCase(FaultTestCase):
    """nova-compute running as a user other than root (simulated: os.getuid
    answers nobody's uid, privsep runs in-process as root).

    Where libvirt cannot remember a file's owner (no user xattrs, as on
    NFS, or remember_owner = 0) it gives a job's file back to root; here it
    remembers it, so the test makes the overlay root's and nova-compute
    "another user" instead. Either way nova-compute must own the overlay
    it flattens in place and uploads.
    """

    def test_overlay_is_given_back_before_the_in_place_flatten(self):
        self.flags(strategies=[LIVE], live_flatten='in-place',
                   group='snapdriver')
        domain = self.make_domain('running')
        nova_uid = 65534
        owners = []
        real_rebase = qemu_img.rebase

        def rebase(path, *args, **kwargs):
            owners.append(os.stat(path).st_uid)
            return real_rebase(path, *args, **kwargs)

        self.useFixture(fixtures.MockPatchObject(
            nova_privsep.sys_admin_pctxt, 'client_mode', False))
        self.useFixture(fixtures.MonkeyPatch('snapdriver.qemu_img.rebase',
                                             rebase))
        self.useFixture(fixtures.MonkeyPatch('os.getuid', lambda: nova_uid))

        self.snapshot(domain)

        self.assertEqual([nova_uid], owners)
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')


class _DeletedDuringSnapshot(base.FakeImageService):
    """The image is deleted by its owner right after snapshot() read it."""

    def get(self, context, image_id):
        image = super().get(context, image_id)
        self.deleted.add(image_id)
        return image


class UploadFaultTestCase(FaultTestCase):

    scenarios = [
        ('live-running', {'strategy': LIVE, 'state': 'running'}),
        ('direct-running', {'strategy': DIRECT, 'state': 'running'}),
        ('internal-shutoff', {'strategy': INTERNAL, 'state': 'shutoff'}),
    ]

    def setUp(self):
        super().setUp()
        self.flags(strategies=[self.strategy], group='snapdriver')

    def test_upload_fails(self):
        domain = self.make_domain(self.state)
        self.images.fail_upload = nova_exception.GlanceConnectionFailed(
            server='glance.example', reason='connection reset by peer')

        exc, _sampler = self.snapshot_fails(
            domain, nova_exception.GlanceConnectionFailed, 'glance.example')

        self.assertIs(self.images.fail_upload, exc)
        self.assert_guest_intact(domain, self.state)
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)

    def test_image_deleted_during_snapshot(self):
        domain = self.make_domain(self.state)
        self.images = _DeletedDuringSnapshot(self.uploads_directory)
        self.driver._image_api = self.images

        self.snapshot_fails(domain, nova_exception.ImageNotFound, 'image-1')

        self.assert_guest_intact(domain, self.state)
        self.assert_logged(domain, 'because it was deleted')


class BlockJobFaultTestCase(FaultTestCase):
    """The live strategy's block copy fails, stalls, or loses its domain."""

    def setUp(self):
        super().setUp()
        self.flags(strategies=[LIVE], group='snapdriver')
        self.slow_block_copy()

    def watch(self, domain, action):
        watcher = JobWatcher(domain.uuid, self.snapshots_directory, action)
        watcher.start()
        self.addCleanup(watcher.join, 10)
        return watcher

    def test_job_aborted_from_outside(self):
        # A slow poll: the watcher surely aborts while snapshot() waits.
        self.flags(block_job_poll_interval=1, group='snapdriver')
        domain = self.make_domain('running')
        self.inject()
        watcher = self.watch(domain, lambda dom: dom.blockJobAbort('vda', 0))

        _exc, sampler = self.snapshot_fails(
            domain, exception.BlockJobFailed, 'aborted from outside',
            domain.disk_path)

        watcher.join(10)
        self.assertIsNone(watcher.error)
        self.assertTrue(watcher.job)
        # The work directory was private while QEMU wrote into it.
        self.assertEqual(1, len(watcher.modes))
        for path, mode in watcher.modes.items():
            self.assertThat(os.path.basename(path), matchers.StartsWith(
                'snapdriver-%s-' % domain.uuid))
            self.assert_private(path, mode)
        self.assert_never_left(sampler, 'running')
        self.assert_guest_intact(domain, 'running')
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)
        self.assert_qemu_img_calls_safe()

    def test_mirror_never_ready(self):
        self.flags(block_job_timeout=1, group='snapdriver')
        domain = self.make_domain('running')

        _exc, sampler = self.snapshot_fails(
            domain, exception.BlockJobTimeout, 'block_job_timeout',
            'the guest kept running')

        self.assert_never_left(sampler, 'running')
        # assert_guest_intact also proves the job was aborted.
        self.assert_guest_intact(domain, 'running')
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)

    def test_domain_destroyed_mid_copy(self):
        self.flags(block_job_poll_interval=0.5, group='snapdriver')
        domain = self.make_domain('running')
        watcher = self.watch(domain, lambda dom: dom.destroy())

        self.snapshot_fails(domain, exception.GuestStoppedDuringSnapshot,
                            domain.uuid, 'stopped during its live-shallow-'
                            'rebase snapshot')

        self.assertIsNone(watcher.error)
        # Stopped from outside: it stays stopped (and defined), nothing of
        # ours remains and its disk is whole.
        self.assert_guest_intact(domain, 'shutoff')
        self.assert_logged(domain, 'stopped during its snapshot',
                           level=logging.INFO)

    def test_domain_vanishes_mid_copy(self):
        self.flags(block_job_poll_interval=0.5, group='snapdriver')
        domain = self.make_domain('running')

        def vanish(dom):
            # Undefined first (it goes on, transient), then destroyed: the
            # domain is gone at once, with no stopped-but-defined moment.
            dom.undefine()
            dom.destroy()
        watcher = self.watch(domain, vanish)

        self.snapshot_fails(domain, nova_exception.InstanceNotFound,
                            domain.uuid)

        self.assertIsNone(watcher.error)
        self.assertNotIn(domain.uuid, [d.UUIDString() for d in
                                       domain.conn.listAllDomains(0)])
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assert_check_clean(domain.disk_path, 'qcow2')
        self.assertTrue(real.images_equal(
            domain.disk_path, 'qcow2', domain.images.reference_path, 'raw'))
        self.assert_logged(domain, 'disappeared during its snapshot',
                           level=logging.INFO)


def _snapshot_in_child(uuid, snapshots_directory, uploads_directory):
    """Be the compute process KilledComputeTestCase kills.

    Snapshots ``uuid`` with a block copy that is never ready.
    """
    CONF.set_override('connection_uri', real.LIBVIRT_URI, 'libvirt')
    CONF.set_override('virt_type', 'kvm' if real.kvm_usable() else 'qemu',
                      'libvirt')
    CONF.set_override('snapshots_directory', snapshots_directory, 'libvirt')
    CONF.set_override('lock_path', os.path.join(
        os.path.dirname(snapshots_directory), 'locks'), 'oslo_concurrency')
    CONF.set_override('strategies', [LIVE], 'snapdriver')
    libvirt.virDomain.blockCopy = _slow_block_copy
    drv = driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(), False)
    drv._image_api = base.FakeImageService(uploads_directory)
    # make_instance uses nothing of the test case but the domain's uuid.
    instance = base.DriverTestCase.make_instance(
        None, types.SimpleNamespace(uuid=uuid))
    drv.snapshot(None, instance, 'image-child', lambda **kw: None)


def _init_host_in_child(snapshots_directory, uuid):
    """Be the restarted compute process of KilledComputeTestCase.

    Runs the whole ``init_host()``, LibvirtDriver's included, and exits.
    It starts libvirt event threads and Nova's process-wide executors,
    which is why it runs in a process of its own. Warnings go to stderr.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='%(levelname)s %(name)s %(message)s')
    CONF.set_override('connection_uri', real.LIBVIRT_URI, 'libvirt')
    CONF.set_override('virt_type', 'kvm' if real.kvm_usable() else 'qemu',
                      'libvirt')
    CONF.set_override('snapshots_directory', snapshots_directory, 'libvirt')
    CONF.set_override('strategies', [LIVE], 'snapdriver')
    # The parent test's lock path (beside the snapshots directory).
    CONF.set_override('lock_path', os.path.join(
        os.path.dirname(snapshots_directory), 'locks'), 'oslo_concurrency')
    code = 1
    try:
        drv = driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(), False)
        # The parent test's domain is this host's only one (see
        # base.DriverTestCase).
        base.only_own_guests(drv, {uuid.lower()})
        drv.init_host(socket.gethostname())
        print('empty qcow2 targets prepared: %s' %
              qemu_img._TEMPLATE['confirmed'])
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # The event threads never end: leave without joining them.
        os._exit(code)


class KilledComputeTestCase(FaultTestCase):
    """nova-compute is SIGKILLed in the middle of a live snapshot."""

    scenarios = [
        ('service-restart', {'cleaner': 'init_host'}),
        ('next-snapshot', {'cleaner': 'snapshot'}),
    ]

    def test_killed_mid_copy(self):
        self.flags(strategies=[LIVE], group='snapdriver')
        domain = self.make_domain('running')
        out = open(os.path.join(self.workdir, 'child.log'), 'wb')
        self.addCleanup(out.close)
        child = subprocess.Popen(
            [sys.executable, '-m', _MODULE, domain.uuid,
             self.snapshots_directory, self.uploads_directory],
            stdout=out, stderr=subprocess.STDOUT, cwd=_TOP)
        self.addCleanup(lambda: child.poll() is None and child.kill())

        deadline = time.monotonic() + 60
        while not domain.dom.blockJobInfo('vda', 0):
            self.assertIsNone(child.poll(), 'the child ended early')
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        self.assertEqual(-signal.SIGKILL, child.wait(30))

        # The guest never stopped and stays persistent; the job and the
        # work directory are what the dead process left.
        self.assertEqual('running', domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertTrue(domain.dom.blockJobInfo('vda', 0))
        stale = os.listdir(self.snapshots_directory)
        self.assertEqual(1, len(stale))

        if self.cleaner == 'init_host':
            # The restarted service, a new process: LibvirtDriver's
            # init_host() in full, then snapdriver's cleanup.
            restart = subprocess.run(
                [sys.executable, '-m', _MODULE, 'init-host',
                 self.snapshots_directory, domain.uuid],
                capture_output=True, text=True, timeout=300, cwd=_TOP)
            self.assertEqual(0, restart.returncode, restart.stderr)
            self.assertEqual({}, domain.dom.blockJobInfo('vda', 0))
            # Nothing left, also of the first snapshot's qemu-img runs,
            # which the start made (qemu_img.prepare_empty_qcow2).
            self.assertEqual([], os.listdir(self.snapshots_directory))
            self.assertIn('empty qcow2 targets prepared: True',
                          restart.stdout)
            workdir = os.path.join(self.snapshots_directory, stale[0])
            self.assertIn('Removed work directory %s' % workdir,
                          restart.stderr)
            self.assertIn('block copy job onto %s' % workdir,
                          restart.stderr)
            self.assertIn('of domain %s' % domain.name, restart.stderr)
            self.snapshot(domain)
        else:
            self.snapshot(domain)
            self.assert_logged(domain, 'Removed work directory')
            self.assert_logged(domain, 'Aborted a block copy job')

        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')


class SharedSnapshotsDirectoryTestCase(FaultTestCase):
    """``[libvirt] snapshots_directory`` under an instances_path on shared
    storage: work directories of other hosts' running snapshots are there.
    """

    def test_service_start_cleans_only_this_hosts_work(self):
        domain = self.make_domain('running')
        ours = os.path.join(self.snapshots_directory, '%s%s-%s-k1lled00' % (
            qemu_img.NAME_PREFIX, domain.uuid, CONF.host))
        # Another host snapshots an instance this host does not run, and
        # one that is defined here too (migrated since).
        theirs = [
            os.path.join(self.snapshots_directory, '%s%s-%s-runn1ng0' % (
                qemu_img.NAME_PREFIX, uuid, 'other-compute')) for uuid in
            ('4f6c2d1e-9b8a-4c3d-8e7f-0a1b2c3d4e5f', domain.uuid)]
        for path in [ours] + theirs:
            os.mkdir(path, 0o700)
            with open(os.path.join(path, 'image.qcow2'), 'wb') as f:
                f.write(b'data')

        self.driver._clean_snapshot_leftovers()

        self.assertFalse(os.path.exists(ours))
        for path in theirs:
            self.assertTrue(os.path.exists(os.path.join(path,
                                                        'image.qcow2')),
                            '%s of another host was removed' % path)
        self.assert_message('Removed work directory %s' % ours)


class CommandDuringNovaSnapshotTestCase(FaultTestCase):
    """``snapdriver snapshot`` of a domain whose Nova snapshot is running.

    The command runs as its own process, as an operator would run it; it
    must wait for the running snapshot instead of aborting its job as a
    leftover.
    """

    def test_command_waits_for_the_running_snapshot(self):
        self.flags(strategies=[LIVE], group='snapdriver')
        self.slow_block_copy()
        domain = self.make_domain('running')
        errors = []

        def nova_snapshot():
            try:
                self.snapshot(domain)
            except Exception as e:
                errors.append(e)

        nova = threading.Thread(target=nova_snapshot)
        nova.start()
        self.addCleanup(nova.join, 120)
        deadline = time.monotonic() + 60
        while not domain.dom.blockJobInfo('vda', 0):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)

        nova_conf = os.path.join(self.workdir, 'nova.conf')
        with open(nova_conf, 'w') as f:
            f.write('[DEFAULT]\nhost = %s\n[libvirt]\nconnection_uri = %s\n'
                    'virt_type = %s\nsnapshots_directory = %s\n'
                    '[oslo_concurrency]\nlock_path = %s\n'
                    % (CONF.host, real.LIBVIRT_URI, CONF.libvirt.virt_type,
                       self.snapshots_directory,
                       CONF.oslo_concurrency.lock_path))
        output = os.path.join(self.workdir, 'command.qcow2')
        log = open(os.path.join(self.workdir, 'command.log'), 'w+')
        self.addCleanup(log.close)
        command = subprocess.Popen(
            [sys.executable, '-m', 'snapdriver.cmd.cli', '--config-file',
             nova_conf, 'snapshot', domain.name, output, '--strategy',
             LIVE, '--format', 'qcow2'], stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: command.poll() is None and command.kill())

        # Long enough for the command to load and reach the leftovers.
        time.sleep(5)
        self.assertIsNone(command.poll(), 'the command did not wait')
        self.assertTrue(domain.dom.blockJobInfo('vda', 0),
                        "the Nova snapshot's job was aborted")
        # Let the Nova snapshot's mirror catch up: it ends, then the
        # command takes its turn.
        domain.dom.blockJobSetSpeed('vda', 0, 0)
        nova.join(120)
        self.assertEqual([], errors)
        self.assertEqual(0, command.wait(120), log.seek(0) or log.read())

        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assertTrue(real.images_equal(
            output, 'qcow2', domain.images.reference_path, 'raw'))
        self.assert_guest_intact(domain, 'running')


class ConcurrentSnapshotTestCase(FaultTestCase):

    def test_two_snapshots_of_one_instance(self):
        self.flags(strategies=[LIVE], group='snapdriver')
        domain = self.make_domain('running')
        instance = self.make_instance(domain)
        # Each overlay takes a second to create: without the per-instance
        # lock the two snapshots would overlap.
        self.inject('create', 'delay')
        errors = []
        barrier = threading.Barrier(2)

        def snap(image_id):
            barrier.wait()
            try:
                self.snapshot(domain, instance=instance, image_id=image_id)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=snap, args=(i,))
                   for i in ('image-a', 'image-b')]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

        self.assertEqual([], errors)
        self.assert_image_equals_disk('image-a', 'qcow2', domain)
        self.assert_image_equals_disk('image-b', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_qemu_img_calls_safe()
        # Every call in a work directory, in time order: one snapshot's
        # calls all come before the other's.
        order = []
        for call in sorted(self.qemu_img_calls(), key=lambda c: c['time']):
            for path in call['dirs']:
                if not order or order[-1] != path:
                    order.append(path)
        self.assertEqual(2, len(order), order)


class BadConfigurationTestCase(FaultTestCase):

    def test_unknown_strategy_stops_the_service(self):
        self.flags(strategies=[LIVE, 'no-such-strategy'], group='snapdriver')
        exc = self.assertRaises(exception.UnknownSnapshotStrategy,
                                self.driver.init_host, 'host')
        for fragment in ('no-such-strategy', '[snapdriver] strategies') + (
                INSTALLED):
            self.assertIn(fragment, str(exc))

    def test_empty_strategy_list_stops_the_service(self):
        self.flags(strategies=[], group='snapdriver')
        exc = self.assertRaises(exception.NoSnapshotStrategyConfigured,
                                self.driver.init_host, 'host')
        for fragment in ('[snapdriver] strategies is empty',) + INSTALLED:
            self.assertIn(fragment, str(exc))


class BadOptionValueTestCase(FaultTestCase):
    """oslo.config refuses values out of range, naming the option."""

    scenarios = [
        ('qemu_img_timeout', {'option': 'qemu_img_timeout', 'value': '-1'}),
        ('block_job_timeout', {'option': 'block_job_timeout',
                               'value': '0'}),
        ('block_job_poll_interval', {'option': 'block_job_poll_interval',
                                     'value': '-0.5'}),
        ('free_space_margin_mb', {'option': 'free_space_margin_mb',
                                  'value': '-10'}),
    ]

    def test_config_file_value_refused(self):
        path = os.path.join(self.workdir, 'nova.conf')
        with open(path, 'w') as f:
            f.write('[snapdriver]\n%s = %s\n' % (self.option, self.value))
        opts = cfg.ConfigOpts()
        conf.register_opts(opts)
        opts(['--config-file', path], project='nova',
             default_config_dirs=[])
        exc = self.assertRaises(cfg.ConfigFileValueError, getattr,
                                opts.snapdriver, self.option)
        self.assertIn(self.option, str(exc))

    def test_override_refused(self):
        self.assertRaises(ValueError, CONF.set_override, self.option,
                          float(self.value), 'snapdriver')


class _RawDeclaredDomain(real.RealDomain):
    """Declares its qcow2 disk as raw."""

    def _xml(self):
        return super()._xml().replace("type='qcow2'", "type='raw'")


class _OtherBackingDomain(real.RealDomain):
    """Its XML names a backing file other than the one the qcow2 says."""

    def _xml(self):
        other = os.path.join(self.images.workdir, 'other-base.raw')
        shutil.copy(self.images.base_path, other)
        store = ("<backingStore type='file'><format type='raw'/>"
                 "<source file='%s'/></backingStore>\n      " % other)
        return super()._xml().replace("<target dev='vda'",
                                      store + "<target dev='vda'")


class BadDiskTestCase(FaultTestCase):

    def test_missing_disk(self):
        self.flags(strategies=[DIRECT], group='snapdriver')
        domain = self.make_domain('shutoff')
        os.unlink(domain.disk_path)

        self.snapshot_fails(domain, exception.QemuImgFailed,
                            domain.disk_path, 'No such file or directory')

        self.assertEqual('shutoff', domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_raw_declared_over_qcow2_running(self):
        self.flags(strategies=[DIRECT], group='snapdriver')
        domain = self.useFixture(_RawDeclaredDomain(start_state='running'))

        _exc, sampler = self.snapshot_fails(
            domain, exception.DiskFormatMismatch, domain.disk_path,
            'declared raw', 'holds qcow2')

        self.assert_never_left(sampler, 'running')
        self.assert_guest_intact(domain, 'running')
        self.assert_logged(domain, 'Failed to snapshot image',
                           level=logging.ERROR)

    def test_raw_declared_over_qcow2_live(self):
        self.flags(strategies=[LIVE], group='snapdriver')
        domain = self.useFixture(_RawDeclaredDomain(start_state='running'))

        self.snapshot_fails(domain, exception.DiskFormatMismatch,
                            'declared raw', 'holds qcow2')

        self.assert_guest_intact(domain, 'running')

    def test_backing_file_differs_from_the_xml(self):
        self.flags(strategies=[DIRECT], group='snapdriver')
        domain = self.useFixture(_OtherBackingDomain(start_state='shutoff'))

        self.snapshot_fails(domain, exception.DiskFormatMismatch,
                            'other-base.raw', domain.images.base_path)

        self.assert_guest_intact(domain, 'shutoff')


class QcowHeaderInGuestDataTestCase(FaultTestCase):
    """The guest wrote a qcow2 image at the start of its disk."""

    scenarios = [
        ('direct-shutoff', {'strategy': DIRECT, 'state': 'shutoff'}),
        ('live-running', {'strategy': LIVE, 'state': 'running'}),
    ]

    def setUp(self):
        super().setUp()
        self.flags(strategies=[self.strategy], group='snapdriver')
        images = self.useFixture(real.DiskImages())
        header = os.path.join(images.workdir, 'header.qcow2')
        real._execute('qemu-img', 'create', '-q', '-f', 'qcow2', header,
                      str(units.Mi))
        real._execute('qemu-io', '-f', 'qcow2', '-c',
                      'write -q -s header.qcow2 0 %d'
                      % os.path.getsize(header),
                      images.overlay_path, cwd=images.workdir)
        real._execute('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                      images.overlay_path, images.reference_path)
        self.domain = self.make_domain(self.state, images=images)

    def test_raw_output_refused(self):
        self.flags(snapshot_image_format='raw', group='libvirt')

        self.snapshot_fails(self.domain, exception.UnsafeDiskImage,
                            'raw output holds a qcow2 header')

        self.assert_guest_intact(self.domain, self.state)
        self.assert_logged(self.domain, 'Failed to snapshot image',
                           level=logging.ERROR)

    def test_qcow2_output_accepted(self):
        self.flags(snapshot_image_format='qcow2', group='libvirt')
        self.snapshot(self.domain)
        self.assert_image_equals_disk('image-1', 'qcow2', self.domain)
        self.assert_guest_intact(self.domain, self.state)


class InternalSnapshotLeftoverTestCase(FaultTestCase):

    def setUp(self):
        super().setUp()
        self.flags(strategies=[INTERNAL], group='snapdriver')
        self.domain = self.make_domain('shutoff')

    def ours(self):
        return [s['name'] for s in real.internal_snapshots(
            self.domain.disk_path)
            if s['name'].startswith(qemu_img.NAME_PREFIX)]

    def test_delete_fails_then_next_snapshot_deletes(self):
        self.inject('snapshot', 'fail', match='-d')
        self.snapshot_fails(self.domain, exception.QemuImgFailed,
                            'snapshot delete', 'injected failure')
        self.assertEqual(1, len(self.ours()))
        self.assert_qemu_img_calls_safe()

        self.inject()
        self.snapshot(self.domain, image_id='image-2')

        self.assert_logged(self.domain, 'left by an interrupted snapshot')
        self.assert_image_equals_disk('image-2', 'qcow2', self.domain)
        self.assert_guest_intact(self.domain, 'shutoff')
        self.assert_qemu_img_calls_safe()

    def test_stale_snapshot_deleted_others_kept(self):
        disk = self.domain.disk_path
        opts = 'driver=qcow2,file.driver=file,file.filename=%s' % disk
        for name in ('snapdriver-0123456789abcdef', 'operator-snap'):
            real._execute('qemu-img', 'snapshot', '--image-opts', '-c',
                          name, opts)
        self.inject()

        self.snapshot(self.domain)

        self.assert_logged(self.domain, 'Deleted internal snapshot '
                           'snapdriver-0123456789abcdef')
        self.assertEqual(['operator-snap'], [
            s['name'] for s in real.internal_snapshots(disk)])
        self.assert_image_equals_disk('image-1', 'qcow2', self.domain)
        real._execute('qemu-img', 'snapshot', '--image-opts', '-d',
                      'operator-snap', opts)
        self.assert_guest_intact(self.domain, 'shutoff')
        self.assert_qemu_img_calls_safe()


if __name__ == '__main__':
    if sys.argv[1] == 'init-host':
        _init_host_in_child(*sys.argv[2:])
    else:
        _snapshot_in_child(*sys.argv[1:])
