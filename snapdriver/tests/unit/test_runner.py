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

"""runner.check_source / check_output on real tiny images."""

import logging
import os
import struct
from unittest import mock

import fixtures
import libvirt
from oslo_config import fixture as config_fixture
from oslo_utils import units
from oslo_utils import uuidutils
from oslotest import base

from snapdriver import conf
from snapdriver import exception
from snapdriver import qemu_img
from snapdriver import runner
from snapdriver.strategies import base as strategies_base
from snapdriver.tests.unit import fakes

CONF = conf.CONF

_XML = """<domain><devices><disk type='file' device='disk'>
<source file='%s'/><target dev='vda'/>%s</disk></devices></domain>"""
_BACKING = "<backingStore type='file'><source file='%s'/></backingStore>"


def write_hybrid_iso_headers(path):
    """Give a raw image the signatures of a hybrid ISO (isohybrid, as
    distribution installers ship): a protective MBR for GPT and an ISO 9660
    volume descriptor at 32 KiB.
    """
    mbr = bytearray(512)
    # One partition entry: not bootable, start CHS 0/2/0, type 0xEE (GPT
    # protective), end CHS ff/ff/ff, start LBA 1.
    mbr[446:462] = struct.pack('<B3BB3BII', 0, 0, 2, 0, 0xEE, 0xFF, 0xFF,
                               0xFF, 1, 8191)
    mbr[510:512] = b'\x55\xaa'
    descriptor = b'\x01CD001\x01'
    with open(path, 'r+b') as f:
        f.write(mbr)
        f.seek(32 * units.Ki)
        f.write(descriptor)


class CheckSourceTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)
        self.base = os.path.join(self.dir, 'base.raw')
        qemu_img.create(self.base, 'raw', 4 * units.Mi)
        self.disk = os.path.join(self.dir, 'disk')
        qemu_img.create(self.disk, 'qcow2', 4 * units.Mi,
                        backing_file=self.base, backing_fmt='raw')
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.WARNING))

    def _request(self, path, fmt='qcow2', xml_backing=None, backing=None):
        guest = mock.Mock()
        store = _BACKING % xml_backing if xml_backing else ''
        guest.get_xml_desc.return_value = _XML % (path, store)
        return fakes.make_request(guest=guest, disk_path=path,
                                  source_format=fmt, source_type=fmt,
                                  backing_file=backing)

    def test_overlay_on_its_backing_file_is_accepted_quietly(self):
        runner.check_source(self._request(self.disk, xml_backing=self.base,
                                          backing=self.base))
        self.assertNotIn('Safety check', self.log.output)

    def test_backing_file_not_in_the_xml_is_refused(self):
        e = self.assertRaises(
            exception.DiskFormatMismatch, runner.check_source,
            self._request(self.disk, xml_backing='/other/base',
                          backing=self.base))
        self.assertIn('/other/base', str(e))

    def test_header_is_not_read_for_a_strategy_copying_through_qemu(self):
        # live-backup copies what QEMU reads, through the chain libvirt
        # opened: the header's own backing file does not matter to it, and
        # qemu-img info (10-20 ms before the copy) is not run.
        strategy = mock.Mock(reads_disk_file=False)
        with mock.patch.object(qemu_img, 'info') as info:
            runner.check_source(
                self._request(self.disk, xml_backing='/other/base',
                              backing='/other/base'), strategy)
        info.assert_not_called()

    def test_header_is_read_for_a_strategy_reading_the_file(self):
        strategy = mock.Mock(reads_disk_file=True)
        e = self.assertRaises(
            exception.DiskFormatMismatch, runner.check_source,
            self._request(self.disk, xml_backing='/other/base',
                          backing='/other/base'), strategy)
        self.assertIn('qcow2 on %s' % self.base, str(e))

    def test_header_backing_file_libvirt_did_not_report_is_refused(self):
        # An active guest's request takes its chain from the live XML; a
        # header naming a backing file that chain lacks would make an
        # overlay (live-shallow-rebase) or a convert see other data.
        e = self.assertRaises(
            exception.DiskFormatMismatch, runner.check_source,
            self._request(self.disk, xml_backing=None, backing=None),
            mock.Mock(reads_disk_file=True))
        self.assertIn('qcow2 on %s' % self.base, str(e))

    def test_data_file_is_refused(self):
        data = os.path.join(self.dir, 'data.raw')
        path = os.path.join(self.dir, 'withdata.qcow2')
        qemu_img._run('create', path, ['create', '-f', 'qcow2', '-o',
                                       'data_file=%s' % data, '--', path,
                                       str(units.Mi)])
        e = self.assertRaises(exception.DiskFormatMismatch,
                              runner.check_source, self._request(path))
        self.assertIn('data_file', str(e))

    def test_qcow2_declared_raw_is_refused(self):
        e = self.assertRaises(exception.DiskFormatMismatch,
                              runner.check_source,
                              self._request(self.disk, fmt='raw'))
        self.assertIn('declared raw', str(e))
        self.assertIn('qcow2', str(e))

    def test_raw_disk_holding_a_hybrid_iso_is_accepted(self):
        # GPT and ISO 9660 at once: both are raw data to QEMU.
        path = os.path.join(self.dir, 'hybrid.raw')
        qemu_img.create(path, 'raw', 4 * units.Mi)
        write_hybrid_iso_headers(path)
        runner.check_source(self._request(path, fmt='raw'))

    def test_raw_output_holding_a_hybrid_iso_is_accepted(self):
        path = os.path.join(self.dir, 'hybrid.raw')
        qemu_img.create(path, 'raw', 4 * units.Mi)
        write_hybrid_iso_headers(path)
        runner.check_output(path, 'raw')

    def test_qcow2_that_is_also_an_iso_is_refused_with_a_typed_error(self):
        # An ISO 9660 descriptor in the qcow2 file's unused header space.
        with open(self.disk, 'r+b') as f:
            f.seek(32 * units.Ki)
            f.write(b'\x01CD001\x01')
        e = self.assertRaises(
            exception.DiskFormatMismatch, runner.check_source,
            self._request(self.disk, xml_backing=self.base,
                          backing=self.base))
        self.assertIn('iso', str(e))
        self.assertIn('qcow2', str(e))

    def test_output_with_a_backing_file_is_refused(self):
        self.assertRaises(exception.UnsafeDiskImage, runner.check_output,
                          self.disk, 'qcow2')

    def test_flat_output_is_accepted(self):
        out = os.path.join(self.dir, 'out.qcow2')
        qemu_img.convert(self.disk, 'qcow2', out, 'qcow2')
        runner.check_output(out, 'qcow2')
        raw = os.path.join(self.dir, 'out.raw')
        qemu_img.convert(self.disk, 'qcow2', raw, 'raw')
        runner.check_output(raw, 'raw')


class _LiveStrategyFailing(strategies_base.SnapshotStrategy):
    """A live strategy whose libvirt call fails with ``error``."""

    name = 'fake-live'
    guest_state = strategies_base.GUEST_LIVE

    def __init__(self, error):
        self.error = error

    def unsupported_reason(self, request):
        return None

    def space_needed(self, request):
        return 0

    def capture(self, request, out_path, run):
        raise self.error


class StoppedGuestTestCase(base.BaseTestCase):
    """A libvirt call of a live strategy fails because the guest stopped."""

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)
        self.disk = os.path.join(self.dir, 'disk')
        qemu_img.create(self.disk, 'qcow2', 4 * units.Mi)
        self.guest = mock.Mock()
        self.guest.get_xml_desc.return_value = _XML % (self.disk, '')
        self.request = fakes.make_request(
            guest=self.guest, disk_path=self.disk, backing_file=None,
            snapshots_directory=os.path.join(self.dir, 'snapshots'))

    def _capture(self, code, message):
        error = libvirt.libvirtError(message)
        error.err = (code, 0, message, 0, None, None, None, 0, 0)
        with runner.captured(self.request, _LiveStrategyFailing(error),
                             power=None):
            self.fail('the capture did not fail')

    def test_monitor_gone_with_the_guest_is_a_stopped_guest(self):
        # A guest destroyed while libvirt talks to its QEMU: libvirt
        # reports a system error of the monitor, not "not running".
        self.guest.is_active.return_value = False
        e = self.assertRaises(
            exception.GuestStoppedDuringSnapshot, self._capture,
            libvirt.VIR_ERR_SYSTEM_ERROR,
            'Unable to read from monitor: Connection reset by peer')
        self.assertIn('Unable to read from monitor', str(e))

    def test_error_of_a_running_guest_is_kept(self):
        self.guest.is_active.return_value = True
        e = self.assertRaises(
            libvirt.libvirtError, self._capture,
            libvirt.VIR_ERR_SYSTEM_ERROR, 'Unable to read from monitor')
        self.assertNotIsInstance(e, exception.GuestStoppedDuringSnapshot)


class CopyStartedTestCase(base.BaseTestCase):
    """The moment the copy begins: what comes before is the fixed cost."""

    def test_unset_until_the_copy_begins(self):
        run = runner.SnapshotRun(mock.sentinel.request, mock.Mock())
        self.assertIsNone(run.copy_started)

    @mock.patch.object(runner.time, 'monotonic', side_effect=[10.0, 12.5,
                                                              14.0])
    def test_first_call_counts(self, monotonic):
        run = runner.SnapshotRun(mock.sentinel.request, mock.Mock())
        run.copy_begins()
        run.copy_begins()
        self.assertEqual(12.5, run.copy_started)


class CheckSpaceTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.request = fakes.make_request(snapshots_directory=self.dir)
        st = os.statvfs(self.dir)
        self.free = st.f_bavail * st.f_frsize
        margin = runner.CONF.snapdriver.free_space_margin_mb * units.Mi
        self.room = self.free - margin
        self.strategy = mock.Mock(spec=strategies_base.SnapshotStrategy)

    def test_bound_that_fits_spares_the_measure(self):
        self.strategy.space_bound.return_value = units.Mi
        self.assertEqual(units.Mi, runner.check_space(self.request,
                                                      self.strategy))
        self.strategy.space_needed.assert_not_called()

    def test_bound_too_large_is_measured(self):
        # An upper bound that does not fit must not refuse a snapshot
        # whose exact need fits.
        self.strategy.space_bound.return_value = self.free * 2
        self.strategy.space_needed.return_value = units.Mi
        self.assertEqual(units.Mi, runner.check_space(self.request,
                                                      self.strategy))

    def test_no_bound_is_measured(self):
        self.strategy.space_bound.return_value = None
        self.strategy.space_needed.return_value = units.Mi
        self.assertEqual(units.Mi, runner.check_space(self.request,
                                                      self.strategy))

    def test_measured_need_that_does_not_fit_is_refused(self):
        self.strategy.space_bound.return_value = self.free * 2
        self.strategy.space_needed.return_value = self.room + units.Mi
        self.assertRaises(exception.InsufficientSnapshotSpace,
                          runner.check_space, self.request, self.strategy)


class PrepareTargetsTestCase(base.BaseTestCase):
    """prepare_targets: the first snapshot's qemu-img runs, at start."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(host='compute-1')
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.seen = []
        self.prepare = self.useFixture(fixtures.MockPatchObject(
            qemu_img, 'prepare_empty_qcow2', side_effect=self._record)).mock

    def _record(self, directory):
        self.seen.append((directory, os.path.isdir(directory)))

    def _mkdir(self, name):
        os.mkdir(os.path.join(self.snapdir, name))
        return name

    def test_runs_in_a_directory_of_its_own_then_removes_it(self):
        runner.prepare_targets(self.snapdir)
        self.prepare.assert_called_once()
        (directory, existed), = self.seen
        self.assertTrue(existed)
        self.assertEqual(self.snapdir, os.path.dirname(directory))
        self.assertTrue(os.path.basename(directory).startswith(
            'snapdriver-template-compute-1-'))
        # Never taken for a snapshot's work directory.
        self.assertIsNone(runner.parse_workdir_name(
            os.path.basename(directory)))
        self.assertEqual([], os.listdir(self.snapdir))

    def test_removes_what_a_killed_start_of_this_host_left(self):
        self._mkdir('snapdriver-template-compute-1-abc')
        kept = sorted([
            self._mkdir('snapdriver-template-compute-2-abc'),
            self._mkdir('snapdriver-template-compute-1-a-abc'),
            self._mkdir('snapdriver-%s-compute-1-abc' % uuidutils.
                        generate_uuid())])
        runner.prepare_targets(self.snapdir)
        self.assertEqual(kept, sorted(os.listdir(self.snapdir)))

    def test_creates_the_snapshots_directory(self):
        snapdir = os.path.join(self.snapdir, 'snapshots')
        runner.prepare_targets(snapdir)
        self.prepare.assert_called_once()
        self.assertEqual([], os.listdir(snapdir))

    def test_never_raises(self):
        not_a_dir = os.path.join(self.snapdir, 'file')
        open(not_a_dir, 'w').close()
        runner.prepare_targets(not_a_dir)
        self.prepare.assert_not_called()

    def test_its_directory_is_removed_on_every_exit(self):
        self.prepare.side_effect = RuntimeError('boom')
        self.assertRaises(RuntimeError, runner.prepare_targets, self.snapdir)
        self.assertEqual([], os.listdir(self.snapdir))
