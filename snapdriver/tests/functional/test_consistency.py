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

"""Snapshots of a real, writing Linux guest are point-in-time, and quiesce
is real.

Every test boots its own :class:`writer_guest.WriterGuest`: a writer in the
guest fills ``vda`` with blocks 1, 2, 3... each written to the disk
(O_DIRECT|O_DSYNC) before the next starts, so a point-in-time
(crash-consistent) copy of ``vda`` holds exactly the blocks 1..N, for some
N, and :func:`writer_guest.scan_image` proves it block by block. ``vdb`` is
an ext4 filesystem for the guest agent to freeze.

The snapshots are taken by the real code: ``LibvirtSnapshotDriver.snapshot``
(Nova's path), or :func:`runner.captured` with
:class:`guest_state.LibvirtPowerControl` (the CLI's path) where a test
needs the run record (``frozen_seconds``). Spies only watch: each calls
the real function it wraps. The numbers each test measured are attached
as its ``numbers`` detail, in the subunit stream of the run (``stestr
last --subunit``); doc/source/consistency.rst lists those of two runs.
"""

import json
import logging
import os
import shutil
import time

import fixtures
import libvirt
from nova.compute import task_states
import nova.privsep
from nova.virt.libvirt import guest as libvirt_guest
from oslo_utils import units
import testscenarios
from testtools import content

from snapdriver import exception
from snapdriver import guest_state
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver import strategies
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import writer_guest

load_tests = testscenarios.load_tests_apply_scenarios

#: The live strategies this file checks; each must be installed.
LIVE = ('live-shallow-rebase', 'live-backup')
#: The cold strategies this file checks.
COLD = ('cold-direct-extract', 'cold-internal')

#: Blocks the writer must have written before a snapshot begins.
MIN_BLOCKS = 200
#: Blocks the writer must add after a cold snapshot's restore.
RESUME_BLOCKS = 50
#: Upper bound of a "short" freeze, in seconds. The guest agent's
#: freeze/thaw round trips under TCG on a loaded host take well under it.
MAX_FROZEN_SECONDS = 5.0


def _scenarios(names):
    # Every name, installed or not: ConsistencyTestCase.setUp fails the
    # scenario of a strategy that is missing rather than dropping it.
    return [(name, {'strategy': name}) for name in names]


_WRAPPER = """#!/bin/sh
# qemu-img that fails its flatten steps (rebase, convert); every other
# command runs the real qemu-img.
case "$1" in
    rebase|convert)
        echo "injected failure of qemu-img $1" >&2
        exit 1
        ;;
esac
exec %s "$@"
"""


class ConsistencyTestCase(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        strategy = getattr(self, 'strategy', None)
        installed = strategies.available_names()
        if strategy is not None and strategy not in installed:
            self.fail('strategy %s is not installed (installed: %s)' % (
                strategy, ', '.join(installed)))
        reason = writer_guest.guest_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.numbers = {}
        self.addDetail('numbers', content.Content(
            content.UTF8_TEXT,
            lambda: [json.dumps(self.numbers, sort_keys=True).encode()]))

    def boot(self, **kwargs):
        guest = self.useFixture(writer_guest.WriterGuest(**kwargs))
        self.addDetail('console', content.Content(
            content.UTF8_TEXT,
            lambda: [guest.console_text().encode('utf-8')]))
        self.numbers['boot_seconds'] = round(guest.boot_seconds, 1)
        return guest

    def strategy_object(self, name):
        return strategies.Registry.load([name]).get(name)

    def disk_now(self, guest):
        """(N, run id) of the guest's disk, read with the guest paused.

        A -U read of a disk being written is not point-in-time; pausing
        makes it one.
        """
        guest.dom.suspend()
        try:
            return writer_guest.scan_image(guest.disk_path, 'qcow2',
                                           force_share=True)
        finally:
            guest.dom.resume()

    def spy_fsfreeze(self):
        """Record what virDomainFsFreeze/FsThaw return (filesystem counts).

        :returns: the list of ``(call, count, monotonic time)``.
        """
        spy = writer_guest.fs_freeze_spy()
        events = spy.__enter__()
        self.addCleanup(spy.__exit__, None, None, None)
        return events

    def spy_runs(self):
        """Keep every SnapshotRun, so a failed snapshot's is readable."""
        runs = []

        class RecordingRun(runner.SnapshotRun):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                runs.append(self)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.runner.SnapshotRun', RecordingRun))
        return runs

    def kill_agent(self, guest):
        """Stop qemu-ga inside the guest, through qemu-ga itself."""
        guest.agent_command('guest-exec', {'path': '/bin/busybox',
                                           'arg': ['killall', 'qemu-ga']})
        deadline = time.monotonic() + 30
        while True:
            try:
                guest.agent_ping(timeout=2)
            except libvirt.libvirtError:
                return
            self.assertLess(time.monotonic(), deadline,
                            'qemu-ga still answers after killall')
            time.sleep(0.2)

    def kill_agent_at_freeze(self, guest):
        """Kill qemu-ga when a snapshot asks for the freeze, then freeze.

        Both drivers freeze through ``virDomain.fsFreeze`` (the stock one
        through Nova's ``Guest.freeze_filesystems``); the real one runs
        after the agent is gone, past every preflight (the guest-ping of
        ``os_require_quiesce`` included).

        :returns: a list that receives, per freeze asked for, the block
            job of ``vda`` and whether its mirror was ready at that moment.
        """
        real_freeze = libvirt.virDomain.fsFreeze
        seen = []

        def freeze(dom, *args, **kwargs):
            seen.append({'job': guest.dom.blockJobInfo('vda', 0),
                         'mirror_ready': "ready='yes'" in
                         guest.dom.XMLDesc(0)})
            self.kill_agent(guest)
            return real_freeze(dom, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.fsFreeze', freeze))
        return seen

    def captured_request(self, guest, image_properties):
        return snap_request.build(libvirt_guest.Guest(guest.dom),
                                  image_format='qcow2',
                                  image_properties=image_properties)

    def watch_cold_snapshot(self, at_restore, seq_of):
        """Spy a cold snapshot's restore and its read of the disk.

        ``at_restore(request)`` runs at the last moment of the managed
        save, just before the restore (the disk is still as it was at the
        save); its result is ``seen['saved']``, and ``seq_of(saved)`` the
        writer's newest block on the disk then. ``seen['extracted_while']``
        is the domain's state when the snapshot's copy read the disk of
        ``seen['guest']``, which the test sets once it has booted it. A
        copy that reads while the guest runs starts only once the guest
        has written RESUME_BLOCKS more blocks: a copy of the disk's
        current state, not of the snapshot, then differs from the disk at
        the save.
        """
        real_restore = guest_state._restore
        real_convert = qemu_img.convert
        seen = {}

        def spy_restore(request, power, paused, record):
            seen['saved'] = at_restore(request)
            return real_restore(request, power, paused, record)

        def spy_convert(src, src_fmt, dest, dest_fmt, **kwargs):
            guest = seen['guest']
            if src == guest.disk_path:
                seen['extracted_while'] = guest.dom.state()[0]
                if seen['extracted_while'] == libvirt.VIR_DOMAIN_RUNNING:
                    guest.wait_for_seq(seq_of(seen['saved']) + RESUME_BLOCKS,
                                       timeout=120)
            return real_convert(src, src_fmt, dest, dest_fmt, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.guest_state._restore', spy_restore))
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.convert', spy_convert))
        return seen

    def assert_extracted_while(self, seen):
        # cold-internal extracts its internal snapshot while the guest
        # runs again (the work directory's filesystem has room for its
        # rewrites); cold-direct-extract copies the saved disk.
        self.assertEqual(
            libvirt.VIR_DOMAIN_RUNNING if self.strategy == 'cold-internal'
            else libvirt.VIR_DOMAIN_SHUTOFF, seen['extracted_while'])

    def assert_no_leftovers(self, guest):
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual({}, guest.dom.blockJobInfo('vda', 0),
                         'a block job is left on the disk')
        stats = guest.dom.jobStats(0)
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE,
                         stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE),
                         'a job is left on the domain: %s' % stats)
        self.assertEqual([], real.internal_snapshots(guest.disk_path,
                                                     force_share=True))

    def assert_running_throughout(self, guest, sampler):
        self.assert_sampled_throughout(sampler)
        self.assertEqual({'running'}, sampler.states)
        self.assertEqual(0, sampler.transient_samples,
                         'the domain was undefined during the snapshot')
        self.assertTrue(guest.dom.isActive())
        self.assertTrue(guest.dom.isPersistent())
        self.assertFalse(guest.dom.hasManagedSaveImage())


class TestLivePointInTime(ConsistencyTestCase):
    """A live snapshot of a writing guest is a crash-consistent prefix."""

    scenarios = _scenarios(LIVE)

    def test_image_is_point_in_time(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        guest = self.boot()
        before = guest.wait_for_seq(MIN_BLOCKS, timeout=120)

        t0 = time.monotonic()
        calls, sampler = self.snapshot(guest, sample=True)
        took = time.monotonic() - t0
        n_disk, disk_run = self.disk_now(guest)

        self.assert_task_states(calls)
        path = self.images.uploads['image-1']
        self.assertIsNone(qemu_img.info(path, 'qcow2').backing_file)
        # Every block valid, blocks 1..N and nothing after: a hole or a
        # torn block raises here.
        n, run_id = writer_guest.scan_image(path, 'qcow2')
        self.numbers.update(strategy=self.strategy, seq_before=before,
                            image_n=n, disk_n_after=n_disk,
                            snapshot_seconds=round(took, 2))
        self.assertEqual(disk_run, run_id, 'not this writer run')
        # Writes that completed before the snapshot began are in it...
        self.assertGreater(n, before)
        # ...and the image is one instant of the disk, not its end state:
        # the writer went on writing while the snapshot was finished.
        self.assertLess(n, n_disk)
        self.assert_running_throughout(guest, sampler)
        self.assert_no_leftovers(guest)


class TestLiveScatteredPointInTime(ConsistencyTestCase):
    """A live snapshot of a guest rewriting scattered blocks is one instant.

    A front-to-back copy of an appending writer also looks like a prefix;
    a guest rewriting blocks all over its disk (writer -x) leaves a copy
    that is not of one instant with old blocks beside newer ones.
    """

    scenarios = _scenarios(LIVE)

    #: 16 MiB: 4096 blocks, each rewritten several times before the
    #: snapshot begins.
    DISK_MIB = 16

    def disk_instant(self, guest):
        guest.dom.suspend()
        try:
            return writer_guest.verify_point_in_time(
                guest.disk_path, 'qcow2', force_share=True)
        finally:
            guest.dom.resume()

    def test_image_is_one_instant(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        guest = self.boot(disk_mib=self.DISK_MIB, rate=0, scatter=True)
        nblocks = self.DISK_MIB * units.Mi // writer_guest.BLOCK_SIZE
        before = guest.wait_for_seq(2 * nblocks, timeout=240)

        calls, sampler = self.snapshot(guest, sample=True)
        n_disk, disk_run = self.disk_instant(guest)

        self.assert_task_states(calls)
        path = self.images.uploads['image-1']
        cutoff, run_id = writer_guest.verify_point_in_time(path, 'qcow2')
        self.numbers.update(strategy=self.strategy, seq_before=before,
                            image_cutoff=cutoff, disk_cutoff_after=n_disk)
        self.assertEqual(disk_run, run_id, 'not this writer run')
        self.assertGreater(cutoff, before)
        self.assertLess(cutoff, n_disk)
        self.assert_running_throughout(guest, sampler)
        self.assert_no_leftovers(guest)


class TestColdScatteredPointInTime(TestLiveScatteredPointInTime):
    """A cold snapshot of a guest rewriting scattered blocks is the disk at
    the managed save, also when it is extracted while the guest runs again
    (cold-internal): every rewrite then lands on a cluster the internal
    snapshot shares.
    """

    scenarios = _scenarios(COLD)

    def test_image_is_one_instant(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        seen = self.watch_cold_snapshot(
            lambda request: writer_guest.verify_point_in_time(
                request.disk_path, 'qcow2'),
            seq_of=lambda saved: saved[0])
        guest = seen['guest'] = self.boot(disk_mib=self.DISK_MIB, rate=0,
                                          scatter=True)
        nblocks = self.DISK_MIB * units.Mi // writer_guest.BLOCK_SIZE
        before = guest.wait_for_seq(2 * nblocks, timeout=240)

        calls, sampler = self.snapshot(guest, sample=True)
        guest.wait_for_seq(seen['saved'][0] + RESUME_BLOCKS, timeout=120)
        n_disk, disk_run = self.disk_instant(guest)

        self.assert_task_states(calls)
        cutoff, run_id = writer_guest.verify_point_in_time(
            self.images.uploads['image-1'], 'qcow2')
        self.numbers.update(strategy=self.strategy, seq_before=before,
                            image_cutoff=cutoff, disk_cutoff_after=n_disk)
        self.assertEqual((cutoff, run_id), seen['saved'])
        self.assertEqual(disk_run, run_id, 'the guest rebooted')
        self.assertGreaterEqual(cutoff, before)
        self.assertGreater(n_disk, cutoff)
        self.assert_extracted_while(seen)
        self.assertIn('shutoff', sampler.states)
        self.assertEqual(0, sampler.transient_samples)
        self.assertTrue(guest.dom.isPersistent())
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING, guest.dom.state()[0])
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual([], real.internal_snapshots(guest.disk_path,
                                                     force_share=True))
        self.assertEqual([], guest.dom.listAllSnapshots(0))


class TestColdPointInTime(ConsistencyTestCase):
    """A cold snapshot is the disk at the managed save; nothing is lost."""

    scenarios = _scenarios(COLD)

    def test_image_is_disk_at_managed_save(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        reference = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'disk-at-restore.qcow2')
        copy = qemu_img.convert  # before the spy replaces it

        def at_restore(request):
            # The disk is still as it was at the save (cold-direct-extract:
            # the image is made; cold-internal: its internal snapshot is).
            # Keep a copy.
            copy(request.disk_path, 'qcow2', reference, 'qcow2')
            return {'state': guest.dom.state()[0],
                    'managed_save': guest.dom.hasManagedSaveImage(),
                    'disk': writer_guest.scan_image(request.disk_path,
                                                    'qcow2')}

        seen = self.watch_cold_snapshot(
            at_restore, seq_of=lambda saved: saved['disk'][0])
        guest = seen['guest'] = self.boot()
        before = guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        calls, sampler = self.snapshot(guest, sample=True)

        self.assert_task_states(calls)
        n, run_id = writer_guest.scan_image(self.images.uploads['image-1'],
                                            'qcow2')
        self.assertEqual(libvirt.VIR_DOMAIN_SHUTOFF, seen['saved']['state'])
        self.assertTrue(seen['saved']['managed_save'])
        self.assertEqual((n, run_id), seen['saved']['disk'])
        self.assertTrue(real.images_equal(self.images.uploads['image-1'],
                                          'qcow2', reference, 'qcow2'),
                        'the image differs from the disk as it was during '
                        'the managed save')
        self.assert_extracted_while(seen)
        self.assertGreaterEqual(n, before)
        self.assert_sampled_throughout(sampler)
        self.assertIn('shutoff', sampler.states)
        self.assertEqual(0, sampler.transient_samples)
        self.assertTrue(guest.dom.isPersistent())
        self.assertFalse(guest.dom.hasManagedSaveImage())
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING, guest.dom.state()[0])

        # Restored from memory, the same writer run goes on from n + 1:
        # the disk stays one prefix, with no gap after n and no lost
        # write before it. (The console log restarts with the restore.)
        guest.wait_for_seq(n + RESUME_BLOCKS, timeout=120)
        n_later, later_run = self.disk_now(guest)
        self.numbers.update(strategy=self.strategy, seq_before=before,
                            image_n=n, disk_n_later=n_later)
        self.assertEqual(run_id, later_run,
                         'the writer restarted: the guest rebooted')
        self.assertGreaterEqual(n_later, n + RESUME_BLOCKS)
        self.assertEqual([], os.listdir(self.snapshots_directory))
        self.assertEqual([], real.internal_snapshots(guest.disk_path,
                                                     force_share=True))


class TestQuiesce(ConsistencyTestCase):
    """The freeze happens when the image asks for it; the thaw follows."""

    scenarios = _scenarios(LIVE)

    def test_freeze_then_thaw(self):
        guest = self.boot()
        guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        fs_before = guest.wait_for_seq(1, label='fswriter')
        events = self.spy_fsfreeze()
        request = self.captured_request(guest, {'hw_qemu_guest_agent': True})
        strategy = self.strategy_object(self.strategy)

        with runner.captured(request, strategy,
                             guest_state.LibvirtPowerControl(
                                 request.guest)) as (out_path, run):
            n = writer_guest.verify_prefix(out_path, 'qcow2')
            frozen = run.quiesce.get('frozen_seconds')
            total = run.total

        self.numbers.update(strategy=self.strategy, image_n=n,
                            frozen_seconds=frozen,
                            snapshot_seconds=round(total, 2),
                            fs_events=[e[:2] for e in events])
        self.assertGreater(n, MIN_BLOCKS - 1)
        # One freeze of the guest's filesystem (the ext4 on vdb), then one
        # thaw of it, and nothing else.
        self.assertEqual(['freeze', 'thaw'], [e[0] for e in events])
        self.assertEqual(1, events[0][1], 'filesystems frozen')
        self.assertEqual(1, events[1][1], 'filesystems thawed')
        self.assertIsNotNone(frozen)
        self.assertGreater(frozen, 0)
        self.assertLess(frozen, MAX_FROZEN_SECONDS)
        self.assertLess(frozen, total)
        self.assertEqual('thawed', guest.fs_frozen_status())
        # The filesystem takes writes again.
        guest.wait_for_seq(guest.latest_seq('fswriter') + 1,
                           label='fswriter', timeout=60)
        self.assertGreater(guest.latest_seq('fswriter'), fs_before)
        self.assert_no_leftovers(guest)


class TestQuiesceFailures(ConsistencyTestCase):

    def test_thaw_before_failed_flatten(self):
        strategy = self.strategy_object('live-shallow-rebase')
        # The in-place flatten is the one that runs qemu-img rebase.
        self.flags(live_flatten='in-place', group='snapdriver')
        wrapper = os.path.join(self.workdir, 'qemu-img-fails-flatten')
        with open(wrapper, 'w') as f:
            f.write(_WRAPPER % shutil.which('qemu-img'))
        os.chmod(wrapper, 0o700)
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.QEMU_IMG', wrapper))
        guest = self.boot()
        guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        events = self.spy_fsfreeze()
        runs = self.spy_runs()
        at_flatten = []
        real_rebase = qemu_img.rebase

        def spy_rebase(*args, **kwargs):
            at_flatten.append(guest.fs_frozen_status())
            return real_rebase(*args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.rebase', spy_rebase))
        request = self.captured_request(guest, {'hw_qemu_guest_agent': True})

        def take():
            with runner.captured(request, strategy,
                                 guest_state.LibvirtPowerControl(
                                     request.guest)):
                pass

        e = self.assertRaises(exception.QemuImgFailed, take)
        self.assertIn('injected failure of qemu-img rebase', str(e))
        self.assertEqual(1, len(runs))
        frozen = runs[0].quiesce.get('frozen_seconds')
        self.numbers.update(frozen_seconds=frozen,
                            fs_events=[ev[:2] for ev in events],
                            status_at_flatten=at_flatten)
        self.assertEqual(['freeze', 'thaw'], [ev[0] for ev in events])
        self.assertEqual(1, events[0][1], 'filesystems frozen')
        self.assertEqual(1, events[1][1], 'filesystems thawed')
        self.assertIsNotNone(frozen)
        self.assertGreater(frozen, 0)
        self.assertLess(frozen, MAX_FROZEN_SECONDS)
        # Thawed before the flatten ran, and still thawed now.
        self.assertEqual(['thawed'], at_flatten)
        self.assertEqual('thawed', guest.fs_frozen_status())
        self.assertTrue(guest.dom.isActive())
        self.assertTrue(guest.dom.isPersistent())
        self.assert_no_leftovers(guest)


class TestRequiredQuiesce(ConsistencyTestCase):
    """os_require_quiesce with a dead guest agent fails the snapshot."""

    scenarios = _scenarios(LIVE)

    def test_agent_stopped(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        guest = self.boot()
        self.kill_agent(guest)
        before = guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        instance = self.make_instance(guest, {'hw_qemu_guest_agent': 'yes',
                                              'os_require_quiesce': 'yes'})
        sampler = base.StateSampler(guest.uuid)
        sampler.start()
        try:
            e = self.assertRaises(exception.QuiesceRequired, self.snapshot,
                                  guest, instance)
        finally:
            sampler.stop()

        message = str(e)
        self.numbers.update(strategy=self.strategy, message=message,
                            samples=sampler.samples)
        self.assertIn(guest.uuid, message)
        self.assertIn('os_require_quiesce', message)
        self.assertIn('agent', message)
        # Found by the guest-ping preflight, before any job started.
        self.assertIn('does not answer', message)
        self.assertEqual({}, self.images.uploads)
        self.assert_running_throughout(guest, sampler)
        self.assert_no_leftovers(guest)
        # The writer never stopped and its disk is still one prefix.
        guest.wait_for_seq(before + RESUME_BLOCKS, timeout=120)
        n_disk, _run = self.disk_now(guest)
        self.assertGreaterEqual(n_disk, before + RESUME_BLOCKS)


class TestQuiesceFailsMidSnapshot(ConsistencyTestCase):
    """The agent dies after the preflight, when the freeze is asked for."""

    scenarios = _scenarios(LIVE)

    def setUp(self):
        super().setUp()
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.guest = self.boot()
        self.before = self.guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        self.events = self.spy_fsfreeze()
        self.at_freeze = self.kill_agent_at_freeze(self.guest)
        self.runs = self.spy_runs()
        self.log = self.useFixture(fixtures.FakeLogger(
            name='snapdriver', level=logging.INFO,
            format='%(levelname)s %(name)s %(message)s'))

    def assert_freeze_asked_once(self):
        self.assertEqual(1, len(self.at_freeze))
        if self.strategy == 'live-shallow-rebase':
            # The freeze comes once the mirror is in sync (ready). NOTE:
            # not cur == end: the strategy saw them equal, but the guest
            # writes on, and a write between that check and this record
            # (the freeze call) grows end until the mirror copies it.
            job = self.at_freeze[0]['job']
            self.assertTrue(job, 'no block job at the freeze')
            self.assertLessEqual(job['cur'], job['end'])
            self.assertTrue(self.at_freeze[0]['mirror_ready'])
        # No freeze succeeded, so no thaw was asked for; the agent is gone,
        # but the filesystem writer shows vdb still takes writes.
        self.assertEqual([], self.events)
        self.guest.wait_for_seq(self.guest.latest_seq('fswriter') + 1,
                                label='fswriter', timeout=60)

    def test_required_quiesce_fails_the_snapshot(self):
        instance = self.make_instance(self.guest, {
            'hw_qemu_guest_agent': 'yes', 'os_require_quiesce': 'yes'})
        sampler = base.StateSampler(self.guest.uuid)
        sampler.start()
        try:
            e = self.assertRaises(exception.QuiesceRequired, self.snapshot,
                                  self.guest, instance)
        finally:
            sampler.stop()

        message = str(e)
        self.numbers.update(strategy=self.strategy, message=message,
                            at_freeze=self.at_freeze)
        self.assertIn(self.guest.uuid, message)
        self.assertIn('os_require_quiesce', message)
        self.assertIn('agent', message)
        # Not the preflight's guest-ping: the freeze itself failed.
        self.assertNotIn('does not answer', message)
        self.assert_freeze_asked_once()
        self.assertEqual({}, self.images.uploads)
        self.assert_running_throughout(self.guest, sampler)
        self.assert_no_leftovers(self.guest)
        self.guest.wait_for_seq(self.before + RESUME_BLOCKS, timeout=120)
        n_disk, _run = self.disk_now(self.guest)
        self.assertGreaterEqual(n_disk, self.before + RESUME_BLOCKS)

    def test_optional_quiesce_only_warns(self):
        instance = self.make_instance(self.guest,
                                      {'hw_qemu_guest_agent': 'yes'})
        calls, sampler = self.snapshot(self.guest, instance, sample=True)

        self.assert_task_states(calls)
        self.assert_freeze_asked_once()
        self.assertIn('WARNING snapdriver.guest_state Quiescing guest %s '
                      'failed, continuing without' % self.guest.name,
                      self.log.output)
        self.assertEqual(1, len(self.runs))
        self.assertNotIn('frozen_seconds', self.runs[0].quiesce)
        n, _run_id = writer_guest.scan_image(
            self.images.uploads['image-1'], 'qcow2')
        self.numbers.update(strategy=self.strategy, image_n=n,
                            at_freeze=self.at_freeze)
        self.assertGreater(n, self.before)
        self.assert_running_throughout(self.guest, sampler)
        self.assert_no_leftovers(self.guest)


class TestStockQuiesce(ConsistencyTestCase):
    """What doc/source/consistency.rst says of the stock driver's quiesce.

    When the freeze itself fails, Nova 34's ``_live_snapshot`` logs
    "Skipping quiescing instance" and takes an unquiesced snapshot, even
    with ``os_require_quiesce`` set.
    """

    def test_failed_freeze_is_skipped_despite_require_quiesce(self):
        self.flags(strategies=['stock'], group='snapdriver')
        # NOTE: the stock live snapshot chowns its delta through Nova's
        # privsep context; as root the privileged function runs in-process
        # instead of starting "sudo privsep-helper".
        if os.geteuid() != 0:
            self.skipTest("the stock live snapshot needs root for Nova's "
                          "privsep chown")
        self.useFixture(fixtures.MockPatchObject(
            nova.privsep.sys_admin_pctxt, 'client_mode', False))
        log = self.useFixture(fixtures.FakeLogger(
            name='nova.virt.libvirt.driver', level=logging.INFO,
            format='%(levelname)s %(message)s'))
        guest = self.boot()
        before = guest.wait_for_seq(MIN_BLOCKS, timeout=120)
        events = self.spy_fsfreeze()
        at_freeze = self.kill_agent_at_freeze(guest)
        instance = self.make_instance(guest, {'hw_qemu_guest_agent': 'yes',
                                              'os_require_quiesce': 'yes'})
        # Nova's error message names the instance by its database id.
        instance.id = 1

        calls, _sampler = self.snapshot(guest, instance)

        # Stock tries a direct snapshot first and goes back to pending
        # before its live snapshot: it ends uploading, like ours.
        self.assertEqual((task_states.IMAGE_UPLOADING,
                          task_states.IMAGE_PENDING_UPLOAD), calls[-1])
        self.assertEqual(1, len(at_freeze))
        self.assertTrue(at_freeze[0]['job'], 'no block job at the freeze')
        self.assertEqual([], events)
        self.assertIn('INFO Skipping quiescing instance', log.output)
        self.assertIn('QEMU guest agent is not connected', log.output)
        n, _run_id = writer_guest.scan_image(
            self.images.uploads['image-1'],
            self.images.metadata['image-1']['disk_format'])
        self.numbers.update(strategy='stock', image_n=n, seq_before=before)
        self.assertGreater(n, before)
        self.assertTrue(guest.dom.isActive())
        self.assertTrue(guest.dom.isPersistent())
        self.assertEqual([], os.listdir(self.snapshots_directory))
