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

"""Which strategy applies to which snapshot, and why not."""

import os
from unittest import mock

import fixtures
from nova.compute import power_state
from oslo_config import fixture as config_fixture
from oslo_utils import units
from oslotest import base

from snapdriver import conf
from snapdriver import exception
from snapdriver import runner
from snapdriver.strategies import cold_direct
from snapdriver.strategies import cold_internal
from snapdriver.strategies import live_shallow_rebase
from snapdriver.strategies import stock
from snapdriver.tests.unit import fakes

CONF = conf.CONF


class StrategyRulesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.live = live_shallow_rebase.LiveShallowRebase()
        self.direct = cold_direct.ColdDirectExtract()
        self.internal = cold_internal.ColdInternal()
        self.stock = stock.Stock()
        self.request = fakes.make_request()

    def test_running_qcow2_guest_fits_every_mechanism(self):
        for strategy in (self.live, self.direct, self.internal):
            self.assertIsNone(strategy.unsupported_reason(self.request))

    def test_live_needs_a_running_guest(self):
        req = fakes.replace(self.request, power_state=power_state.SHUTDOWN)
        self.assertIn('shut off', self.live.unsupported_reason(req))
        self.assertIsNone(self.direct.unsupported_reason(req))

    def test_paused_guest_can_be_snapshotted_live(self):
        req = fakes.replace(self.request, power_state=power_state.PAUSED)
        self.assertIsNone(self.live.unsupported_reason(req))

    def test_crashed_guest_is_refused_by_all(self):
        req = fakes.replace(self.request, power_state=power_state.CRASHED)
        for strategy in (self.live, self.direct, self.internal):
            self.assertIn('crashed', strategy.unsupported_reason(req))

    def test_workaround_disables_live(self):
        self.conf.config(disable_libvirt_livesnapshot=True,
                         group='workarounds')
        self.assertIn('disable_libvirt_livesnapshot',
                      self.live.unsupported_reason(self.request))
        self.assertIsNone(self.direct.unsupported_reason(self.request))

    def test_ephemeral_encryption_disables_live(self):
        self.conf.config(enabled=True, group='ephemeral_storage_encryption')
        self.assertIn('ephemeral_storage_encryption',
                      self.live.unsupported_reason(self.request))

    def test_lvm_rbd_and_ploop_are_left_to_stock(self):
        for path, kind in (('/dev/vg/disk', 'lvm'), ('rbd:pool/v', 'rbd'),
                           ('/var/lib/nova/ploop', 'ploop')):
            req = fakes.replace(self.request, disk_path=path,
                                source_type=kind, source_format='raw')
            for strategy in (self.live, self.direct, self.internal):
                reason = strategy.unsupported_reason(req)
                self.assertIn(kind, reason)
                self.assertIn(path, reason)

    def test_network_disk_is_not_a_file(self):
        req = fakes.replace(self.request, disk_source_type='network')
        self.assertIn('only local raw or qcow2 files',
                      self.direct.unsupported_reason(req))

    def test_cold_internal_needs_qcow2(self):
        req = fakes.replace(self.request, source_format='raw',
                            source_type='raw', backing_file=None)
        self.assertIn('qcow2', self.internal.unsupported_reason(req))
        self.assertIsNone(self.direct.unsupported_reason(req))
        self.assertIsNone(self.live.unsupported_reason(req))

    def test_unknown_output_format_is_refused(self):
        req = fakes.replace(self.request, image_format='vmdk')
        for strategy in (self.live, self.direct, self.internal):
            self.assertIn('vmdk', strategy.unsupported_reason(req))

    def test_lxc_cannot_be_managed_saved(self):
        req = fakes.replace(self.request, virt_type='lxc')
        self.assertIn('LXC', self.direct.unsupported_reason(req))
        shut = fakes.replace(req, power_state=power_state.SHUTDOWN)
        self.assertIsNone(self.direct.unsupported_reason(shut))

    def test_required_quiesce_without_agent_skips_live(self):
        req = fakes.replace(self.request,
                            image_properties={'os_require_quiesce': True})
        self.assertIn('hw_qemu_guest_agent',
                      self.live.unsupported_reason(req))
        # A cold snapshot needs no quiesce: the guest is stopped.
        self.assertIsNone(self.direct.unsupported_reason(req))

    def test_required_quiesce_of_a_paused_guest_skips_live(self):
        req = fakes.replace(self.request, power_state=power_state.PAUSED,
                            image_properties={'os_require_quiesce': True,
                                              'hw_qemu_guest_agent': True})
        self.assertIn('paused', self.live.unsupported_reason(req))

    def test_required_quiesce_with_agent_keeps_live(self):
        req = fakes.replace(self.request,
                            image_properties={'os_require_quiesce': True,
                                              'hw_qemu_guest_agent': True})
        self.assertIsNone(self.live.unsupported_reason(req))

    def test_stock_only_inside_nova_compute(self):
        self.assertIn('nova-compute',
                      self.stock.unsupported_reason(self.request))
        req = fakes.replace(self.request, driver=object())
        self.assertIsNone(self.stock.unsupported_reason(req))
        self.assertTrue(self.stock.delegates_to_driver)

    def test_live_work_files_are_recognised(self):
        snapdir = self.request.snapshots_directory
        ours = snapdir + '/snapdriver-abc-x1/image.qcow2.delta'
        self.assertTrue(live_shallow_rebase.is_ours(ours, self.request))
        for other in (snapdir + '/other/image.delta',
                      '/var/lib/nova/instances/x/disk.delta',
                      None):
            self.assertFalse(live_shallow_rebase.is_ours(other,
                                                         self.request))

    def test_destination_xml_escapes_the_path(self):
        xml = live_shallow_rebase.DEST_XML % live_shallow_rebase._xml_escape(
            "/a/b'<c>&d")
        self.assertIn("/a/b&apos;&lt;c&gt;&amp;d", xml)


class LiveFlattenChoiceTestCase(base.BaseTestCase):
    """[snapdriver] live_flatten = auto picks by free space."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(free_space_margin_mb=100, group='snapdriver')
        self.live = live_shallow_rebase.LiveShallowRebase()
        self.request = fakes.make_request()
        self.measure = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.measure', return_value=500 * units.Mi)).mock
        self.statvfs = self.useFixture(fixtures.MockPatch(
            'os.statvfs')).mock
        self.statvfs.return_value.f_frsize = 4096

    def _free(self, mib):
        self.statvfs.return_value.f_bavail = mib * units.Mi // 4096

    def test_auto_converts_when_both_copies_fit(self):
        self._free(601)
        self.assertEqual('convert',
                         self.live._flatten_mode(self.request, '/w/d'))
        self.measure.assert_called_once_with('/w/d', 'qcow2', 'qcow2')

    def test_auto_goes_in_place_when_space_is_short(self):
        self._free(599)
        self.assertEqual('in-place',
                         self.live._flatten_mode(self.request, '/w/d'))

    def test_explicit_modes_are_obeyed(self):
        self._free(1)
        self.conf.config(live_flatten='convert', group='snapdriver')
        self.assertEqual('convert',
                         self.live._flatten_mode(self.request, '/w/d'))
        self.conf.config(live_flatten='in-place', group='snapdriver')
        self._free(10 ** 6)
        self.assertEqual('in-place',
                         self.live._flatten_mode(self.request, '/w/d'))
        self.measure.assert_not_called()

    def test_raw_or_compressed_output_is_always_converted(self):
        self.conf.config(live_flatten='in-place', group='snapdriver')
        for req in (fakes.replace(self.request, image_format='raw'),
                    fakes.replace(self.request, compress=True)):
            self.assertEqual('convert', self.live._flatten_mode(req, '/w/d'))


class CopyStartedTestCase(base.BaseTestCase):
    """Each cold strategy notes the copy start as its conversion begins."""

    def setUp(self):
        super().setUp()
        self.request = fakes.make_request()
        self.run = runner.SnapshotRun(self.request, mock.Mock())
        self.seen = []
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.convert',
            side_effect=lambda *a, **k: self.seen.append(
                self.run.copy_started)))

    def test_cold_direct_extract(self):
        cold_direct.ColdDirectExtract().capture(self.request, '/out',
                                                self.run)
        [started] = self.seen
        self.assertIsNotNone(started)

    @mock.patch('snapdriver.qemu_img.snapshot_delete')
    @mock.patch('snapdriver.qemu_img.snapshot_create')
    @mock.patch('snapdriver.qemu_img.snapshot_list', return_value=[])
    def test_cold_internal_after_the_internal_snapshot(self, snapshot_list,
                                                       create, delete):
        create.side_effect = lambda *a, **k: self.seen.append(
            ('create', self.run.copy_started))
        workdir = self.useFixture(fixtures.TempDir()).path
        cold_internal.ColdInternal().capture(
            self.request, os.path.join(workdir, 'out'), self.run)
        self.assertEqual(('create', None), self.seen[0])
        self.assertIsNotNone(self.seen[1])


class ColdInternalInflightTestCase(base.BaseTestCase):
    """A killed qemu-img snapshot's disk is repaired before it is used."""

    def setUp(self):
        super().setUp()
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.request = fakes.make_request(
            snapshots_directory=self.snapdir,
            power_state=power_state.SHUTDOWN)
        self.workdir = os.path.join(
            self.snapdir, runner.workdir_prefix(self.request) + 'abc')
        os.mkdir(self.workdir)
        self.strategy = cold_internal.ColdInternal()
        self.repair = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.repair', return_value={'leaks': 0})).mock
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.snapshot_list', return_value=[]))

    def _events(self):
        events = []
        for name in ('snapshot_create', 'snapshot_delete', 'convert'):
            self.useFixture(fixtures.MockPatch(
                'snapdriver.qemu_img.' + name,
                side_effect=lambda *a, _n=name, **k: events.append(
                    (_n, os.path.exists(self.marker)))))
        return events

    @property
    def marker(self):
        return os.path.join(self.workdir, cold_internal.INFLIGHT)

    def test_marker_covers_the_snapshot_table_changes(self):
        events = self._events()
        run = runner.SnapshotRun(self.request, mock.Mock())
        self.strategy.capture(self.request,
                              os.path.join(self.workdir, 'out'), run)
        self.assertEqual([('snapshot_create', True), ('convert', True),
                          ('snapshot_delete', True)], events)
        self.assertFalse(os.path.exists(self.marker))

    def test_marker_stays_when_the_delete_fails(self):
        self._events()
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.snapshot_delete',
            side_effect=exception.QemuImgFailed(action='snapshot delete',
                                                path='d', reason='x')))
        run = runner.SnapshotRun(self.request, mock.Mock())
        self.assertRaises(exception.QemuImgFailed, self.strategy.capture,
                          self.request, os.path.join(self.workdir, 'out'),
                          run)
        self.assertTrue(os.path.exists(self.marker))

    def test_cleaner_repairs_the_disk_of_a_killed_snapshot(self):
        open(self.marker, 'w').close()
        done = self.strategy.clean_leftovers(self.request)
        self.repair.assert_called_once_with(self.request.disk_path, 'qcow2')
        self.assertEqual(['repaired %s' % self.request.disk_path], done)
        self.assertFalse(os.path.exists(self.marker))

    def test_cleaner_leaves_a_disk_without_marker(self):
        self.assertEqual([], self.strategy.clean_leftovers(self.request))
        self.repair.assert_not_called()

    def test_running_guest_is_not_repaired(self):
        open(self.marker, 'w').close()
        request = fakes.make_request(snapshots_directory=self.snapdir)
        with mock.patch.object(cold_internal.LOG, 'warning') as warning:
            self.assertEqual([], self.strategy.clean_leftovers(request))
        self.repair.assert_not_called()
        self.assertIn('check -r all', warning.call_args[0][0])
        self.assertTrue(os.path.exists(self.marker))


class ColdInternalRestoreFirstTestCase(base.BaseTestCase):
    """cold-internal restores the guest before it extracts its snapshot."""

    def setUp(self):
        super().setUp()
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.diskdir = self.useFixture(fixtures.TempDir()).path
        self.disk = os.path.join(self.diskdir, 'disk')
        with open(self.disk, 'wb') as f:
            f.write(b'x' * units.Mi)
        self.dom = mock.Mock()
        self.dom.XMLDesc.return_value = (
            "<domain type='kvm'><name>i-1</name><devices><disk><target "
            "dev='vda'/></disk></devices></domain>")
        self.dom.listAllSnapshots.return_value = []
        self.request = fakes.make_request(
            guest=mock.Mock(_domain=self.dom), disk_path=self.disk,
            backing_file=None, backing_format=None,
            snapshots_directory=self.snapdir)
        self.workdir = os.path.join(
            self.snapdir, runner.workdir_prefix(self.request) + 'abc')
        os.mkdir(self.workdir)
        self.events = []
        for name in ('snapshot_create', 'snapshot_delete', 'convert'):
            self.useFixture(fixtures.MockPatch(
                'snapdriver.qemu_img.' + name,
                side_effect=lambda *a, _n=name, **k: self.events.append(
                    (_n, k.get('force_share')))))
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.snapshot_list', return_value=[]))
        self.run = runner.SnapshotRun(self.request, mock.Mock())
        # As held() leaves it for a managed-saved guest.
        self.run.guest.suspended_at = 1.0
        self.run.guest._restore = lambda: self.events.append(('restore',))
        self.strategy = cold_internal.ColdInternal()

    def capture(self):
        self.strategy.capture(self.request,
                              os.path.join(self.workdir, 'out'), self.run)

    def test_extract_runs_after_the_restore(self):
        self.capture()
        self.assertEqual([('snapshot_create', None), ('restore',),
                          ('convert', True)], self.events)
        # The running QEMU deletes it, through a record defined for that.
        xml, flags = self.dom.snapshotCreateXML.call_args[0]
        self.assertEqual(
            cold_internal.libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE, flags)
        self.assertIn('<name>snapdriver-', xml)
        # Tried (and dropped) while saved, then defined for the delete.
        self.assertEqual(2, self.dom.snapshotCreateXML.call_count)
        self.assertEqual(
            [mock.call(cold_internal.libvirt.
                       VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY),
             mock.call(0)],
            self.dom.snapshotCreateXML.return_value.delete.call_args_list)
        self.assertEqual([], os.listdir(self.workdir))

    def test_nothing_listed_while_the_guest_is_down(self):
        # clean_leftovers deleted a killed run's snapshots before the save.
        listed = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.snapshot_list',
            return_value=['snapdriver-aa'])).mock
        self.capture()
        listed.assert_not_called()
        self.dom.listAllSnapshots.assert_not_called()
        self.assertEqual([('snapshot_create', None), ('restore',),
                          ('convert', True)], self.events)

    def test_record_refused_keeps_the_guest_saved(self):
        self.dom.snapshotCreateXML.side_effect = (
            cold_internal.libvirt.libvirtError('unsupported'))
        self.capture()
        self.assertEqual([('snapshot_create', None), ('convert', False),
                          ('snapshot_delete', None)], self.events)

    def test_no_room_for_rewrites_keeps_the_guest_saved(self):
        statvfs = os.statvfs(self.diskdir)
        small = mock.Mock(f_bavail=1, f_frsize=statvfs.f_frsize)
        with mock.patch('os.statvfs', return_value=small):
            self.capture()
        self.assertEqual([('snapshot_create', None), ('convert', False),
                          ('snapshot_delete', None)], self.events)
        self.dom.snapshotCreateXML.assert_not_called()

    def test_shut_off_guest_has_nothing_to_restore(self):
        self.run.guest.suspended_at = None
        self.capture()
        self.assertEqual([('snapshot_create', None), ('convert', False),
                          ('snapshot_delete', None)], self.events)

    def test_failed_extract_still_deletes_through_libvirt(self):
        self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.convert',
            side_effect=exception.QemuImgFailed(action='convert', path='d',
                                                reason='x')))
        self.assertRaises(exception.QemuImgFailed, self.capture)
        self.dom.snapshotCreateXML.return_value.delete.assert_called_with(0)

    def _restore_fails(self, guest_started):
        def restore():
            raise RuntimeError('restore failed')
        self.run.guest._restore = restore
        self.request.guest.is_active.return_value = guest_started
        self.assertRaises(RuntimeError, self.capture)

    def test_restore_failed_after_the_start_deletes_through_libvirt(self):
        # E.g. the guest started, then a PCI device re-attach failed.
        self._restore_fails(guest_started=True)
        self.dom.snapshotCreateXML.return_value.delete.assert_called_with(0)
        self.assertEqual([('snapshot_create', None)], self.events)

    def test_restore_failed_deletes_with_qemu_img_while_saved(self):
        self._restore_fails(guest_started=False)
        self.assertEqual([('snapshot_create', None),
                          ('snapshot_delete', None)], self.events)

    def test_cleaner_deletes_leftovers_of_a_running_guest(self):
        names = ['snapdriver-aa', 'other', 'snapdriver-bb']
        listed = self.useFixture(fixtures.MockPatch(
            'snapdriver.qemu_img.snapshot_list', return_value=names)).mock
        recorded = mock.Mock()
        recorded.getName.return_value = 'snapdriver-bb'
        stale = mock.Mock()
        stale.getName.return_value = 'snapdriver-cc'
        self.dom.listAllSnapshots.return_value = [recorded, stale]
        done = self.strategy.clean_leftovers(self.request)
        listed.assert_called_once_with(self.disk, 'qcow2', force_share=True)
        self.assertEqual(['internal snapshot snapdriver-bb',
                          'internal snapshot snapdriver-aa'], done)
        recorded.delete.assert_called_once_with(0)
        stale.delete.assert_called_once_with(
            cold_internal.libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        xml = self.dom.snapshotCreateXML.call_args[0][0]
        self.assertIn('<name>snapdriver-aa</name>', xml)
        self.assertEqual([], [e for e in self.events
                              if e[0] == 'snapshot_delete'])

    def test_redefine_xml(self):
        xml = cold_internal.redefine_xml(
            'snapdriver-x', self.dom.XMLDesc.return_value)
        root = cold_internal.ElementTree.fromstring(xml)
        self.assertEqual('snapdriver-x', root.findtext('name'))
        self.assertEqual('shutoff', root.findtext('state'))
        self.assertEqual('no', root.find('memory').get('snapshot'))
        self.assertIsNone(root.find('disks'))
        self.assertEqual('i-1', root.findtext('domain/name'))
