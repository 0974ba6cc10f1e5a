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

"""Tests of snapdriver.space with the real fallocate(2) on a temp dir."""

import errno
import os
from unittest import mock

import fixtures
from oslo_concurrency import processutils
from oslo_config import fixture as config_fixture
from oslo_utils import units
from oslotest import base

from snapdriver import conf
from snapdriver import exception
from snapdriver import qemu_img
from snapdriver import space
from snapdriver.tests.unit import fakes

CONF = conf.CONF


class SpaceTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(free_space_margin_mb=0, group='snapdriver')
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatchObject(space, '_SUPPORT', {}))
        reason = space.unsupported_reason(self.dir)
        if reason is not None:
            self.skipTest(reason)
        self.target = os.path.join(self.dir, 'target')
        with open(self.target, 'wb') as f:
            f.write(b'x' * 4096)

    def test_reservation_adds_slack(self):
        self.assertEqual(10 + space.SLACK_BYTES, space.reservation_for(10))
        big = 10 * units.Gi
        self.assertEqual(big + int(big * space.SLACK_FRACTION),
                         space.reservation_for(big))

    def test_reserve_allocates_past_the_end(self):
        space.reserve(self.target, 8 * units.Mi)
        st = os.stat(self.target)
        self.assertEqual(4096, st.st_size)
        self.assertGreaterEqual(st.st_blocks * 512, 8 * units.Mi)

    def test_reserve_refuses_what_does_not_fit(self):
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        e = self.assertRaises(exception.InsufficientSnapshotSpace,
                              space.reserve, self.target, free + units.Gi)
        self.assertIn(self.dir, str(e))
        self.assertLess(os.stat(self.target).st_blocks * 512, units.Mi)

    def test_reserve_keeps_the_margin(self):
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        self.conf.config(free_space_margin_mb=free // units.Mi,
                         group='snapdriver')
        self.assertRaises(exception.InsufficientSnapshotSpace,
                          space.reserve, self.target, 8 * units.Mi)

    def test_enospc_from_fallocate_is_insufficient_space(self):
        # Another process took the space between statvfs and fallocate.
        with mock.patch.object(space, '_fallocate_fd', side_effect=OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC))):
            self.assertRaises(exception.InsufficientSnapshotSpace,
                              space.reserve, self.target, units.Mi)

    def test_other_fallocate_error_is_typed(self):
        with mock.patch.object(space, '_fallocate_fd', side_effect=OSError(
                errno.EIO, os.strerror(errno.EIO))):
            e = self.assertRaises(exception.SnapdriverException,
                                  space.reserve, self.target, units.Mi)
        self.assertIn('Input/output error', str(e))

    def test_probe_leaves_no_file_even_when_named(self):
        # Without O_TMPFILE the probe file is unlinked before fallocate.
        real_open = os.open

        def no_tmpfile(path, flags, *args):
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, 'no O_TMPFILE')
            return real_open(path, flags, *args)

        self.useFixture(fixtures.MockPatchObject(space, '_SUPPORT', {}))
        with mock.patch('os.open', side_effect=no_tmpfile):
            self.assertIsNone(space.unsupported_reason(self.dir))
        self.assertEqual(['target'], os.listdir(self.dir))

    def test_probe_of_a_missing_directory_uses_its_parent(self):
        missing = os.path.join(self.dir, 'not', 'yet')
        self.assertIsNone(space.unsupported_reason(missing))
        self.assertEqual(['target'], os.listdir(self.dir))

    def test_unsupported_filesystem_is_reported_and_cached(self):
        self.useFixture(fixtures.MockPatchObject(space, '_SUPPORT', {}))
        with mock.patch.object(space, '_fallocate_fd', side_effect=OSError(
                errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))) as ex:
            reason = space.unsupported_reason(self.dir)
            self.assertEqual(reason, space.unsupported_reason(self.dir))
        self.assertEqual(1, ex.call_count)
        self.assertIn('Operation not supported', reason)
        self.assertIn('cannot reserve space', reason)
        self.assertEqual(['target'], os.listdir(self.dir))


class Qcow2SizeBoundTestCase(base.BaseTestCase):
    """The in-process bound against the real ``qemu-img measure``."""

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)

    def _overlay(self, virtual_size, base_data, overlay_data):
        """A raw base and a qcow2 overlay with scattered data.

        One 64 KiB block every three clusters in the base, every two in
        the overlay (which rewrites some of the base's blocks).
        """
        base = os.path.join(self.dir, 'base')
        disk = os.path.join(self.dir, 'disk')
        qemu_img.create(base, 'raw', virtual_size)
        with open(base, 'r+b') as f:
            for offset in range(0, base_data * 3, 3 * 64 * units.Ki):
                f.seek(offset)
                f.write(os.urandom(64 * units.Ki))
        qemu_img.create(disk, 'qcow2', virtual_size, backing_file=base,
                        backing_fmt='raw')
        writes = []
        for offset in range(units.Mi, units.Mi + overlay_data * 2,
                            2 * 64 * units.Ki):
            writes += ['-c', 'write -P 7 %d %d' % (offset, 64 * units.Ki)]
        if writes:
            processutils.execute('qemu-io', '-f', 'qcow2', *writes, disk)
        return base, disk

    def _check(self, virtual_size, base_data, overlay_data):
        base, disk = self._overlay(virtual_size, base_data, overlay_data)
        allocated = sum(os.stat(p).st_blocks * 512 for p in (base, disk))
        bound = space.qcow2_size_bound(virtual_size, allocated)
        measured = qemu_img.measure(disk, 'qcow2', 'qcow2')
        self.assertGreaterEqual(bound, measured)
        # Not a wild guess either: the overlap of the two layers (the
        # overlay rewrote some of the base's blocks) and the overlay's own
        # metadata, plus a few clusters.
        self.assertLess(bound, measured + overlay_data + 2 * units.Mi)

    def test_bound_of_an_overlay_on_a_raw_base(self):
        self._check(64 * units.Mi, 8 * units.Mi, 4 * units.Mi)

    def test_bound_of_a_full_disk(self):
        self._check(16 * units.Mi, 16 * units.Mi // 3, units.Mi)

    def test_bound_of_an_empty_disk(self):
        self._check(units.Gi, 0, 0)

    def test_bound_is_capped_by_the_virtual_size(self):
        self.assertEqual(space.qcow2_size_bound(units.Gi, units.Gi),
                         space.qcow2_size_bound(units.Gi, 10 * units.Gi))
