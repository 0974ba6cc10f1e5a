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

"""Tests of the live-backup strategy's rules, XML and job handling."""

import os
from unittest import mock
from xml.etree import ElementTree

import fixtures
import libvirt
from nova.compute import power_state
from oslo_config import fixture as config_fixture
from oslo_utils import units
from oslotest import base

from snapdriver import conf
from snapdriver import exception
from snapdriver import runner
from snapdriver import space
from snapdriver.strategies import live_backup
from snapdriver.tests.unit import fakes

CONF = conf.CONF

SNAPDIR = '/var/lib/nova/instances/snapshots'
OUR_TARGET = SNAPDIR + '/snapdriver-4f2a-x1y2/image.qcow2'
UUID = '4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11'

RUNNING = {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
           'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
           'disk_total': 100, 'disk_processed': 40}
NO_JOB = {'type': libvirt.VIR_DOMAIN_JOB_NONE}
DONE = {'type': libvirt.VIR_DOMAIN_JOB_COMPLETED,
        'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
        'disk_total': 100, 'disk_processed': 100, 'success': True}
CANCELLED = {'type': libvirt.VIR_DOMAIN_JOB_CANCELLED,
             'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
             'success': False, 'errmsg': 'Operation canceled'}

DOMAIN_XML = """<domain type='kvm'><devices>
  <disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
  <interface type='network'><target dev='tap0'/></interface>
</devices></domain>"""


def _libvirt_error(code):
    error = libvirt.libvirtError('fake error')
    error.err = (code, 0, 'fake error', 0, None, None, None, 0, 0)
    return error


class FakeDomain(object):
    """A virDomain whose job goes through ``states`` one poll at a time.

    ``states`` are jobStats(0) answers, the last one repeated; ``done`` is
    the completed-job record, handed out once as libvirt does.
    """

    def __init__(self, states=(NO_JOB,), done=None, target=OUR_TARGET,
                 lib_version=9000000, qemu_version=7002000, socket=None):
        self.states = list(states)
        self.done = done
        self.target = target
        self.socket = socket
        self.aborted = 0
        self.begun = []
        self.active = True
        self.dom_state = (libvirt.VIR_DOMAIN_RUNNING,
                          libvirt.VIR_DOMAIN_RUNNING_BOOTED)
        self.resumed = 0
        self.conn = mock.Mock()
        self.conn.getLibVersion.return_value = lib_version
        self.conn.getVersion.return_value = qemu_version

    def connect(self):
        return self.conn

    def state(self):
        return list(self.dom_state)

    def resume(self):
        self.resumed += 1
        self.dom_state = (libvirt.VIR_DOMAIN_RUNNING,
                          libvirt.VIR_DOMAIN_RUNNING_UNPAUSED)

    def isActive(self):
        return self.active

    def jobStats(self, flags=0):
        if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            done, self.done = self.done, None
            return done or dict(NO_JOB)
        if len(self.states) > 1:
            return self.states.pop(0)
        return self.states[0]

    def backupGetXMLDesc(self, flags=0):
        if self.states[0]['type'] == libvirt.VIR_DOMAIN_JOB_NONE:
            raise _libvirt_error(libvirt.VIR_ERR_NO_DOMAIN_BACKUP)
        return live_backup.backup_xml('vda', self.target, ['vda'],
                                      socket=self.socket)

    def backupBegin(self, xml, checkpoint, flags):
        self.begun.append((xml, flags))

    def abortJob(self):
        self.aborted += 1
        self.states = [NO_JOB]
        self.done = dict(CANCELLED)


def _request(dom=None, **changes):
    guest = mock.Mock()
    guest._domain = dom or FakeDomain()
    guest.get_xml_desc.return_value = DOMAIN_XML
    changes.setdefault('snapshots_directory', SNAPDIR)
    return fakes.make_request(guest=guest, **changes)


class RulesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.strategy = live_backup.LiveBackup()
        self.space_reason = self.useFixture(fixtures.MockPatch(
            'snapdriver.space.unsupported_reason',
            return_value=None)).mock

    def test_work_dir_that_cannot_reserve_space_is_refused(self):
        # Without a reservation a full work filesystem would pause the
        # guest; the next strategy (a mirror) only fails its own job.
        self.space_reason.return_value = 'cannot reserve space'
        self.assertEqual('cannot reserve space', self.reason(_request()))
        self.space_reason.assert_called_once_with(SNAPDIR)

    def reason(self, request):
        return self.strategy.unsupported_reason(request)

    def test_running_and_paused_guests_apply(self):
        self.assertIsNone(self.reason(_request()))
        self.assertIsNone(self.reason(
            _request(power_state=power_state.PAUSED)))

    def test_raw_disk_and_raw_output_apply(self):
        self.assertIsNone(self.reason(_request(
            source_format='raw', source_type='raw', image_format='raw')))

    def test_shut_off_guest_is_refused(self):
        reason = self.reason(_request(power_state=power_state.SHUTDOWN))
        self.assertIn('shut off', reason)

    def test_network_disk_is_refused(self):
        reason = self.reason(_request(disk_source_type='network',
                                      source_type='rbd',
                                      disk_path='rbd:pool/vol'))
        self.assertIn('rbd:pool/vol', reason)

    def test_unknown_output_format_is_refused(self):
        self.assertIn('vmdk', self.reason(_request(image_format='vmdk')))

    def test_workaround_disables_it(self):
        self.conf.config(disable_libvirt_livesnapshot=True,
                         group='workarounds')
        self.assertIn('disable_libvirt_livesnapshot',
                      self.reason(_request()))

    def test_old_libvirt_is_refused(self):
        reason = self.reason(_request(FakeDomain(lib_version=7001000)))
        self.assertIn('libvirt 7.1.0', reason)
        self.assertIn('7.2.0', reason)

    def test_old_qemu_is_refused(self):
        reason = self.reason(_request(FakeDomain(qemu_version=4001000)))
        self.assertIn('QEMU 4.1.0', reason)
        self.assertIn('4.2.0', reason)

    def test_minimum_versions_apply(self):
        self.assertIsNone(self.reason(_request(
            FakeDomain(lib_version=7002000, qemu_version=4002000))))

    def test_libvirt_python_without_backup_api_is_refused(self):
        with mock.patch.object(live_backup.libvirt, 'virDomain', object):
            self.assertIn('virDomainBackupBegin', self.reason(_request()))

    def test_unreadable_versions_are_a_reason(self):
        dom = FakeDomain()
        dom.conn.getLibVersion.side_effect = _libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR)
        self.assertIn('cannot read', self.reason(_request(dom)))

    def test_required_quiesce_without_agent_is_refused(self):
        reason = self.reason(_request(
            image_properties={'os_require_quiesce': True}))
        self.assertIn('os_require_quiesce', reason)
        self.assertIn('hw_qemu_guest_agent', reason)

    def test_required_quiesce_with_agent_applies_when_running(self):
        props = {'os_require_quiesce': True, 'hw_qemu_guest_agent': True}
        self.assertIsNone(self.reason(_request(image_properties=props)))
        reason = self.reason(_request(image_properties=props,
                                      power_state=power_state.PAUSED))
        self.assertIn('paused', reason)


class XmlTestCase(base.BaseTestCase):

    def test_only_the_root_disk_is_backed_up(self):
        xml = live_backup.backup_xml('vda', '/snap/out.qcow2',
                                     ['vda', 'vdb', 'sda'])
        root = ElementTree.fromstring(xml)
        self.assertEqual('push', root.get('mode'))
        disks = {d.get('name'): d for d in root.findall('./disks/disk')}
        self.assertEqual(['vda', 'vdb', 'sda'], list(disks))
        vda = disks['vda']
        self.assertEqual(('yes', 'file'), (vda.get('backup'),
                                           vda.get('type')))
        self.assertEqual('qcow2', vda.find('driver').get('type'))
        self.assertEqual('/snap/out.qcow2', vda.find('target').get('file'))
        for name in ('vdb', 'sda'):
            self.assertEqual('no', disks[name].get('backup'))
            self.assertEqual([], list(disks[name]))

    def test_root_disk_missing_from_the_list_is_still_backed_up(self):
        xml = live_backup.backup_xml('vda', '/snap/out.qcow2', ['vdb'])
        self.assertEqual(['/snap/out.qcow2'],
                         live_backup.backup_targets(xml))

    def test_target_path_is_escaped(self):
        path = "/snap/a'b\"c&d<e>.qcow2"
        xml = live_backup.backup_xml('vda', path, ['vda'])
        self.assertEqual([path], live_backup.backup_targets(xml))

    def test_pull_xml_exports_the_root_disk_on_a_unix_socket(self):
        xml = live_backup.backup_xml('vda', '/w/scratch.qcow2',
                                     ['vda', 'vdb'], socket='/w/nbd/sock')
        root = ElementTree.fromstring(xml)
        self.assertEqual('pull', root.get('mode'))
        server = root.find('server')
        self.assertEqual({'transport': 'unix', 'socket': '/w/nbd/sock'},
                         dict(server.attrib))
        disks = {d.get('name'): d for d in root.findall('./disks/disk')}
        vda = disks['vda']
        self.assertEqual({'name': 'vda', 'backup': 'yes', 'type': 'file',
                          'exportname': 'vda'}, dict(vda.attrib))
        self.assertEqual('qcow2', vda.find('driver').get('type'))
        self.assertEqual('/w/scratch.qcow2', vda.find('scratch').get('file'))
        self.assertIsNone(vda.find('target'))
        self.assertEqual('no', disks['vdb'].get('backup'))

    def test_backup_targets_lists_pull_scratch_files(self):
        xml = live_backup.backup_xml('vda', '/w/scratch.qcow2', ['vda'],
                                     socket='/w/nbd/sock')
        self.assertEqual(['/w/scratch.qcow2'],
                         live_backup.backup_targets(xml))

    def test_disk_targets_lists_every_disk_once(self):
        self.assertEqual(['vda', 'vdb', 'sda'],
                         live_backup.disk_targets(DOMAIN_XML))

    def test_backup_targets_skips_excluded_disks(self):
        xml = """<domainbackup mode='push'><disks>
          <disk name='vda' backup='yes' type='file' backupmode='full'>
            <driver type='qcow2'/><target file='/a.qcow2'/></disk>
          <disk name='vdb' backup='no'/>
          <disk name='vdc'><target file='/c.qcow2'/></disk>
        </disks></domainbackup>"""
        self.assertEqual(['/a.qcow2', '/c.qcow2'],
                         live_backup.backup_targets(xml))


class JobTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(block_job_poll_interval=0.01,
                         live_backup_mode='push', group='snapdriver')
        self.strategy = live_backup.LiveBackup()
        self.progress = []
        self.reserve = self.useFixture(fixtures.MockPatch(
            'snapdriver.space.reserve')).mock
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.measure', return_value=10 * units.Mi))

    def run_of(self, request):
        return runner.SnapshotRun(
            request, self.strategy,
            progress=lambda *args: self.progress.append(args))

    def test_completed_job_succeeds_with_progress(self):
        dom = FakeDomain([RUNNING, NO_JOB], done=dict(DONE))
        request = _request(dom)
        live_backup.wait_done(request, dom, self.run_of(request))
        self.assertEqual([('backup', 40, 100), ('backup', 100, 100)],
                         self.progress)
        self.assertEqual(0, dom.aborted)

    def test_cancelled_job_fails(self):
        dom = FakeDomain([RUNNING, NO_JOB], done=dict(CANCELLED))
        request = _request(dom)
        ex = self.assertRaises(exception.BlockJobFailed,
                               live_backup.wait_done, request, dom,
                               self.run_of(request))
        self.assertIn('cancelled', str(ex))
        self.assertIn('Operation canceled', str(ex))

    def test_job_gone_without_record_fails(self):
        dom = FakeDomain([RUNNING, NO_JOB], done=None)
        request = _request(dom)
        ex = self.assertRaises(exception.BlockJobFailed,
                               live_backup.wait_done, request, dom,
                               self.run_of(request))
        self.assertIn('no record', str(ex))

    def test_next_job_running_means_ours_ended(self):
        migration = {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                     'operation':
                         libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT}
        dom = FakeDomain([RUNNING, migration], done=dict(DONE))
        request = _request(dom)
        live_backup.wait_done(request, dom, self.run_of(request))
        self.assertEqual(('backup', 100, 100), self.progress[-1])

    @mock.patch.object(live_backup, 'time')
    def test_timeout(self, fake_time):
        self.conf.config(block_job_timeout=5, group='snapdriver')
        fake_time.monotonic.side_effect = [0, 1, 6]
        dom = FakeDomain([RUNNING])
        request = _request(dom)
        self.assertRaises(exception.BlockJobTimeout, live_backup.wait_done,
                          request, dom, self.run_of(request))
        self.assertEqual(2, len(self.progress))
        fake_time.sleep.assert_called_once_with(0.01)

    @mock.patch.object(live_backup, 'time')
    def test_aborted_job_polled_soon_then_less_often(self, fake_time):
        self.conf.config(block_job_poll_interval=0.1, group='snapdriver')
        fake_time.monotonic.return_value = 0
        dom = FakeDomain([RUNNING] * 7 + [NO_JOB])
        live_backup._wait_backup_gone(dom, _request(dom))
        self.assertEqual([0.005, 0.01, 0.02, 0.04, 0.08, 0.1],
                         [c[0][0] for c in fake_time.sleep.call_args_list])

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_capture_aborts_the_job_when_polling_fails(self, create):
        dom = FakeDomain([RUNNING])
        request = _request(dom)
        with mock.patch.object(dom, 'jobStats', side_effect=[
                _libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR),
                RUNNING, NO_JOB]):
            self.assertRaises(exception.BlockJobFailed,
                              self.strategy.capture, request, OUR_TARGET,
                              self.run_of(request))
        self.assertEqual(1, dom.aborted)
        create.assert_called_once_with(OUR_TARGET, request.virtual_size)

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_stopped_domain_error_reaches_the_runner(self, create):
        # The runner turns it into GuestStoppedDuringSnapshot for Nova.
        dom = FakeDomain([RUNNING])
        dom.active = False
        request = _request(dom)
        with mock.patch.object(dom, 'jobStats', side_effect=_libvirt_error(
                libvirt.VIR_ERR_OPERATION_INVALID)):
            ex = self.assertRaises(libvirt.libvirtError,
                                   self.strategy.capture, request,
                                   OUR_TARGET, self.run_of(request))
        self.assertEqual(libvirt.VIR_ERR_OPERATION_INVALID,
                         ex.get_error_code())

    @mock.patch.object(live_backup.qemu_img, 'confirm_empty_qcow2')
    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_template_confirmed_while_the_job_copies(self, create, confirm):
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        request = _request(dom)
        confirm.side_effect = lambda directory: self.assertEqual(
            1, len(dom.begun), 'confirmed before the job started')
        self.strategy.capture(request, OUR_TARGET, self.run_of(request))
        confirm.assert_called_once_with(os.path.dirname(OUR_TARGET))

    @mock.patch.object(live_backup.qemu_img, 'convert')
    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_capture_converts_a_raw_output(self, create, convert):
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        request = _request(dom, image_format='raw')
        run = self.run_of(request)
        self.strategy.capture(request, SNAPDIR + '/w/image.raw', run)
        (xml, flags), = dom.begun
        self.assertEqual([SNAPDIR + '/w/backup.qcow2'],
                         live_backup.backup_targets(xml))
        self.assertEqual(libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
                         flags)
        convert.assert_called_once_with(
            SNAPDIR + '/w/backup.qcow2', 'qcow2', SNAPDIR + '/w/image.raw',
            'raw', compress=False)
        self.assertIsNotNone(run.point_in_time)

    def test_clean_leftovers_aborts_our_stale_job(self):
        dom = FakeDomain([RUNNING])
        items = self.strategy.clean_leftovers(_request(dom))
        self.assertEqual(['backup job onto %s' % OUR_TARGET], items)
        self.assertEqual(1, dom.aborted)

    def test_clean_leftovers_leaves_foreign_jobs(self):
        dom = FakeDomain([RUNNING], target='/backups/nightly.qcow2')
        self.assertEqual([], self.strategy.clean_leftovers(_request(dom)))
        self.assertEqual(0, dom.aborted)

    def test_clean_leftovers_without_job(self):
        dom = FakeDomain([NO_JOB])
        self.assertEqual([], self.strategy.clean_leftovers(_request(dom)))
        self.assertEqual(0, dom.aborted)

    @mock.patch.object(live_backup.qemu_img, 'measure')
    def test_space_needed(self, measure):
        measure.side_effect = lambda src, fmt, out: {'qcow2': 10}[out]
        # The backup target's reservation, plus the converted output (a
        # raw one needs the virtual size).
        target = space.reservation_for(10)
        self.assertEqual(target, self.strategy.space_needed(_request()))
        self.assertEqual(target + (1 << 30), self.strategy.space_needed(
            _request(image_format='raw')))
        self.assertEqual(target + 10, self.strategy.space_needed(
            _request(compress=True)))

    def test_space_bound_without_a_process(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        disk = os.path.join(tmp, 'disk')
        with open(disk, 'wb') as f:
            f.write(b'x' * units.Mi)
        with mock.patch.object(live_backup.qemu_img, 'measure') as measure:
            bound = self.strategy.space_bound(_request(disk_path=disk,
                                                       backing_file=None))
            raw = self.strategy.space_bound(_request(
                disk_path=disk, backing_file=None, image_format='raw'))
            gone = self.strategy.space_bound(_request(
                disk_path=os.path.join(tmp, 'gone'), backing_file=None))
        measure.assert_not_called()
        qcow2 = space.reservation_for(space.qcow2_size_bound(1 << 30,
                                                             units.Mi))
        self.assertEqual(qcow2, bound)
        self.assertEqual(qcow2 + (1 << 30), raw)
        self.assertIsNone(gone)

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_target_space_reserved_before_the_job(self, create):
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        request = _request(dom)
        self.reserve.side_effect = lambda *a, **k: self.assertEqual(
            [], dom.begun, 'reserved after the job began')
        self.strategy.capture(request, OUR_TARGET, self.run_of(request))
        self.reserve.assert_called_once_with(
            OUR_TARGET, space.reservation_for(10 * units.Mi), instance=None)
        self.assertEqual(1, len(dom.begun))

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_reservation_failure_never_begins_the_job(self, create):
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        request = _request(dom)
        self.reserve.side_effect = exception.InsufficientSnapshotSpace(
            path=SNAPDIR, needed_mb=10, margin_mb=0, free_mb=1)
        self.assertRaises(exception.InsufficientSnapshotSpace,
                          self.strategy.capture, request, OUR_TARGET,
                          self.run_of(request))
        self.assertEqual([], dom.begun)

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_guest_paused_by_io_error_is_resumed_and_said(self, create):
        dom = FakeDomain([RUNNING, NO_JOB], done=dict(
            CANCELLED, type=libvirt.VIR_DOMAIN_JOB_FAILED,
            errmsg='No space left on device'))
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        request = _request(dom)
        ex = self.assertRaises(exception.GuestPausedDuringSnapshot,
                               self.strategy.capture, request, OUR_TARGET,
                               self.run_of(request))
        self.assertEqual(1, dom.resumed)
        self.assertIn('No space left on device', str(ex))
        self.assertIn('was resumed', str(ex))
        self.assertNotIn('not changed', str(ex).split(')')[-1])

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_guest_paused_before_the_snapshot_stays_paused(self, create):
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        request = _request(dom, power_state=power_state.PAUSED)
        self.strategy.capture(request, OUR_TARGET, self.run_of(request))
        self.assertEqual(0, dom.resumed)

    @mock.patch.object(live_backup.qemu_img, 'create_empty_qcow2')
    def test_io_paused_guest_of_a_good_job_is_resumed(self, create):
        # The guest's failed write never reached the disk: the image is
        # good and kept; the guest is resumed.
        dom = FakeDomain([NO_JOB], done=dict(DONE))
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        request = _request(dom)
        self.strategy.capture(request, OUR_TARGET, self.run_of(request))
        self.assertEqual(1, dom.resumed)

    def test_resume_failure_says_the_guest_is_still_paused(self):
        dom = FakeDomain()
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        with mock.patch.object(dom, 'resume', side_effect=_libvirt_error(
                libvirt.VIR_ERR_OPERATION_FAILED)):
            outcome = live_backup.resume_if_io_paused(dom, _request(dom))
        self.assertIn('still paused', outcome)
        self.assertIn('virsh resume instance-00000001', outcome)

    def test_guest_paused_by_the_user_is_not_resumed(self):
        dom = FakeDomain()
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_USER)
        self.assertIsNone(live_backup.resume_if_io_paused(dom, _request(dom)))
        self.assertEqual(0, dom.resumed)


class TargetReleaseTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        conf.CONF.set_override('block_job_poll_interval', 0.01,
                               group='snapdriver')

    @mock.patch.object(live_backup, 'RELEASE_WAIT', 0.05)
    @mock.patch.object(live_backup, 'holds_file', return_value=True)
    @mock.patch.object(live_backup, 'qemu_pid', return_value=4242)
    def test_target_never_released_fails_the_snapshot(self, pid, holds):
        e = self.assertRaises(exception.BlockJobFailed,
                              live_backup.wait_target_released,
                              _request(), '/snap/dir/backup.qcow2')
        self.assertIn('still had /snap/dir/backup.qcow2 open', str(e))
        holds.assert_called_with(4242, '/snap/dir/backup.qcow2')

    @mock.patch.object(live_backup, 'holds_file',
                       side_effect=[True, True, False])
    @mock.patch.object(live_backup, 'qemu_pid', return_value=4242)
    def test_waits_until_released(self, pid, holds):
        live_backup.wait_target_released(_request(), '/snap/backup.qcow2')
        self.assertEqual(3, holds.call_count)

    def test_own_descriptors_are_seen(self):
        # The check itself, on this process and a file it holds open.
        with open(__file__) as f:
            self.assertTrue(live_backup.holds_file(os.getpid(), f.name))
        self.assertFalse(live_backup.holds_file(os.getpid(), __file__))


class PullTestCase(base.BaseTestCase):
    """live_backup_mode = pull, in a real temporary snapshots directory."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(block_job_poll_interval=0.01, block_job_timeout=77,
                         live_backup_mode='pull', group='snapdriver')
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.disk = os.path.join(self.snapdir, 'disk')
        open(self.disk, 'w').close()
        self.workdir = os.path.join(
            self.snapdir, 'snapdriver-%s-host-abcdefgh' % UUID)
        os.mkdir(self.workdir)
        self.out = os.path.join(self.workdir, 'image.qcow2')
        self.scratch = os.path.join(self.workdir, 'scratch.qcow2')
        self.strategy = live_backup.LiveBackup()
        self.events = []
        self.reserve = self.useFixture(fixtures.MockPatch(
            'snapdriver.space.reserve', side_effect=lambda path, *a, **k:
            self.events.append(('reserve', path)))).mock
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.measure', return_value=10 * units.Mi))
        self.create = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.create_empty_qcow2')).mock
        self.convert = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.convert_from_nbd',
            side_effect=lambda *a, **k: self.events.append(
                ('convert', os.path.exists(self.workdir + '/nbd'))))).mock
        self.useFixture(fixtures.MockPatch(
            'snapdriver.strategies.live_backup.qemu_pid',
            return_value=None))
        self.useFixture(fixtures.MockPatch(
            'snapdriver.runner.host_label', return_value='host'))

    def domain(self):
        dom = FakeDomain([NO_JOB], target=self.scratch,
                         socket=self.workdir + '/nbd/sock')
        begin, abort = dom.backupBegin, dom.abortJob

        def backup_begin(xml, checkpoint, flags):
            self.events.append(('begin',))
            begin(xml, checkpoint, flags)
            dom.states = [dict(RUNNING)]

        def abort_job():
            self.events.append(('abort',))
            abort()

        dom.backupBegin = backup_begin
        dom.abortJob = abort_job
        return dom

    def request(self, dom, **changes):
        return _request(dom, snapshots_directory=self.snapdir,
                        disk_path=self.disk, **changes)

    def capture(self, request):
        self.progress = []
        run = runner.SnapshotRun(
            request, self.strategy,
            progress=lambda *args: self.progress.append(args))
        self.strategy.capture(request, self.out, run)
        return run

    def test_job_exported_read_then_ended(self):
        dom = self.domain()
        run = self.capture(self.request(dom))
        self.assertEqual([('reserve', self.scratch), ('begin',),
                          ('convert', True), ('abort',)], self.events)
        (xml, flags), = dom.begun
        self.assertEqual(libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
                         flags)
        root = ElementTree.fromstring(xml)
        sock = self.workdir + '/nbd/sock'
        self.assertEqual(sock, root.find('server').get('socket'))
        self.assertEqual([self.scratch], live_backup.backup_targets(xml))
        self.create.assert_called_once_with(self.scratch, 1 << 30)
        self.reserve.assert_called_once_with(
            self.scratch, space.reservation_for(10 * units.Mi),
            instance=None)
        self.convert.assert_called_once_with(
            'nbd+unix:///vda?socket=' + sock, self.out, 'qcow2',
            compress=False, timeout=77)
        self.assertIsNotNone(run.point_in_time)
        self.assertEqual([('backup', 0, 1 << 30), ('backup', 1 << 30,
                                                   1 << 30)], self.progress)
        self.assertIsNone(dom.done, 'the completed-job record was kept')
        st = os.stat(self.workdir + '/nbd')
        self.assertEqual(0o730, st.st_mode & 0o7777)
        self.assertEqual(os.stat(self.disk).st_gid, st.st_gid)

    def test_raw_and_compressed_outputs_are_read_directly(self):
        for changes in ({'image_format': 'raw'}, {'compress': True}):
            self.convert.reset_mock()
            self.capture(self.request(self.domain(), **changes))
            self.assertEqual(
                (changes.get('image_format', 'qcow2'),
                 changes.get('compress', False)),
                (self.convert.call_args[0][2],
                 self.convert.call_args[1]['compress']))
            os.rmdir(self.workdir + '/nbd')

    def test_failed_copy_ends_the_job(self):
        dom = self.domain()
        self.convert.side_effect = exception.QemuImgFailed(
            action='convert', path='nbd', reason='boom')
        self.assertRaises(exception.QemuImgFailed, self.capture,
                          self.request(dom))
        self.assertEqual(1, dom.aborted)
        self.assertFalse(live_backup.running_backup_targets(dom))

    def test_guest_paused_by_io_error_is_resumed_and_said(self):
        dom = self.domain()
        dom.dom_state = (libvirt.VIR_DOMAIN_PAUSED,
                         libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        self.convert.side_effect = exception.QemuImgFailed(
            action='convert', path='nbd', reason='boom')
        ex = self.assertRaises(exception.GuestPausedDuringSnapshot,
                               self.capture, self.request(dom))
        self.assertEqual(1, dom.resumed)
        self.assertEqual(1, dom.aborted)
        self.assertIn('was resumed', str(ex))

    def test_copy_timeout_is_the_job_timeout(self):
        dom = self.domain()
        self.convert.side_effect = exception.QemuImgTimeout(
            action='convert', path='nbd', timeout=77)
        ex = self.assertRaises(exception.BlockJobTimeout, self.capture,
                               self.request(dom))
        self.assertIn('block_job_timeout', str(ex))
        self.assertEqual(1, dom.aborted)

    def test_job_gone_before_the_end_of_the_copy_fails(self):
        dom = self.domain()

        def copy_then_job_gone(*args, **kwargs):
            dom.states = [NO_JOB]
        self.convert.side_effect = copy_then_job_gone
        ex = self.assertRaises(exception.BlockJobFailed, self.capture,
                               self.request(dom))
        self.assertIn('ended before its export was read', str(ex))

    def test_reservation_failure_never_begins_the_job(self):
        dom = self.domain()
        self.reserve.side_effect = exception.InsufficientSnapshotSpace(
            path=self.snapdir, needed_mb=10, margin_mb=0, free_mb=1)
        self.assertRaises(exception.InsufficientSnapshotSpace,
                          self.capture, self.request(dom))
        self.assertEqual([], dom.begun)

    def test_space_needed_is_the_scratch_and_the_output(self):
        with mock.patch.object(live_backup.qemu_img, 'measure',
                               side_effect=lambda src, fmt, out: {
                                   'qcow2': 10, 'raw': 100}[out]):
            self.assertEqual(space.reservation_for(10) + 10,
                             self.strategy.space_needed(self.request(
                                 self.domain())))
            self.assertEqual(space.reservation_for(10) + (1 << 30),
                             self.strategy.space_needed(self.request(
                                 self.domain(), image_format='raw')))

    def test_disk_measured_once_per_snapshot(self):
        # The preflight check and the reservation ask the same question:
        # one qemu-img measure answers both.
        request = self.request(self.domain())
        with mock.patch.object(live_backup.qemu_img, 'measure',
                               return_value=10) as measure:
            self.strategy.space_needed(request)
            self.capture(request)
        measure.assert_called_once_with(self.disk, 'qcow2', 'qcow2')

    def test_long_socket_path_goes_through_a_short_alias(self):
        workdir = os.path.join(self.snapdir, 'snapdriver-' + 'w' * 120)
        os.mkdir(workdir)
        sock = live_backup.socket_path(workdir, self.disk)
        alias = os.path.dirname(sock)
        self.assertLessEqual(len(sock), live_backup.SOCKET_PATH_MAX)
        self.assertEqual(self.snapdir, os.path.dirname(alias))
        self.assertTrue(os.path.basename(alias).startswith(
            'snapdriver-nbd-'))
        self.assertEqual(os.path.basename(workdir) + '/nbd',
                         os.readlink(alias))
        self.assertTrue(os.path.samefile(workdir + '/nbd', alias))
        live_backup.remove_socket_alias(sock)
        self.assertFalse(os.path.lexists(alias))
        self.assertTrue(os.path.isdir(workdir + '/nbd'))

    def test_clean_leftovers_removes_stale_aliases_only(self):
        os.mkdir(self.workdir + '/nbd')
        other = os.path.join(self.snapdir, 'snapdriver-other-host-x')
        os.makedirs(other + '/nbd')
        links = {}
        for name, target in (('ours', os.path.basename(self.workdir)),
                             ('gone', 'snapdriver-gone'),
                             ('other', os.path.basename(other))):
            links[name] = os.path.join(self.snapdir,
                                       'snapdriver-nbd-' + name)
            os.symlink(target + '/nbd', links[name])
        items = self.strategy.clean_leftovers(self.request(FakeDomain()))
        self.assertEqual(sorted('socket alias %s' % links[n]
                                for n in ('gone', 'ours')), sorted(items))
        self.assertTrue(os.path.islink(links['other']))

    def test_clean_leftovers_aborts_a_stale_pull_job(self):
        dom = FakeDomain([RUNNING], target=self.scratch,
                         socket=self.workdir + '/nbd/sock')
        items = self.strategy.clean_leftovers(self.request(dom))
        self.assertEqual(['backup job onto %s' % self.scratch], items)
        self.assertEqual(1, dom.aborted)


class ModeTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.strategy = live_backup.LiveBackup()
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.disk = os.path.join(self.snapdir, 'disk')
        open(self.disk, 'w').close()

    def mode(self, snapdir=None):
        return self.strategy._mode(_request(
            disk_path=self.disk, snapshots_directory=snapdir or SNAPDIR))

    def test_push_is_the_default(self):
        self.assertEqual('push', CONF.snapdriver.live_backup_mode)
        self.assertEqual('push', self.mode())

    def test_pull_when_configured(self):
        self.conf.config(live_backup_mode='pull', group='snapdriver')
        self.assertEqual('pull', self.mode())

    @mock.patch('os.getgroups', return_value=[])
    @mock.patch('os.getegid', return_value=4321)
    @mock.patch('os.geteuid', return_value=1234)
    def test_push_when_the_socket_would_be_out_of_reach(self, *mocks):
        self.conf.config(live_backup_mode='pull', group='snapdriver')
        self.assertEqual('push', self.mode())
        with mock.patch('os.getgroups',
                        return_value=[os.stat(self.disk).st_gid]):
            self.assertEqual('pull', self.mode())

    def test_push_when_even_the_alias_path_is_too_long(self):
        self.conf.config(live_backup_mode='pull', group='snapdriver')
        self.assertEqual('push', self.mode('/' + 'd' * 100))
        self.assertEqual('pull', self.mode('/' + 'd' * 60))
