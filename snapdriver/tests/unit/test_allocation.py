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

"""Tests of snapdriver.allocation against the real ``qemu-img measure``.

Every image is written by the real qemu-img and qemu-io; the data counted
in-process must be exactly what ``qemu-img measure -O qcow2`` counts: its
``required`` size minus that of an empty image of the same virtual size
(``measure --size``: the metadata of a fully allocated image).
"""

import json
import os
from unittest import mock

from oslo_concurrency import processutils
from oslo_utils import units
from oslotest import base

from snapdriver import allocation
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import space
from snapdriver.tests.unit import fakes

Ki = units.Ki
Mi = units.Mi


class DataBytesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)

    def path(self, name):
        return os.path.join(self.dir, name)

    def raw(self, name, size, extents):
        """A sparse raw file with random data at (offset, length) extents."""
        path = self.path(name)
        with open(path, 'wb') as f:
            f.truncate(size)
            for offset, length in extents:
                f.seek(offset)
                f.write(os.urandom(length))
        return path

    def qcow2(self, name, size, commands=(), backing=None, options=None):
        """A qcow2 file written by qemu-io ``commands`` ('write -z 1M 64k')."""
        path = self.path(name)
        args = ['qemu-img', 'create', '-q', '-f', 'qcow2']
        if backing:
            args += ['-b', backing, '-F', 'raw']
        for key, value in (options or {}).items():
            args += ['-o', '%s=%s' % (key, value)]
        processutils.execute(*(args + [path, str(size)]))
        args = []
        for command in commands:
            args += ['-c', command]
        if args:
            processutils.execute('qemu-io', '-f', 'qcow2', *args, path)
        return path

    def measured_data(self, path, fmt, size):
        # NOTE: 'measure --size' reports the metadata alone (an empty
        # file from 'qemu-img create -f raw' would not do: its first block
        # is allocated, and counted as a data cluster).
        out, _err = processutils.execute(
            'qemu-img', 'measure', '--output=json', '-O', 'qcow2',
            '--size', str(size))
        return (qemu_img.measure(path, fmt, 'qcow2') -
                json.loads(out)['required'])

    def assert_counts_like_qemu_img(self, path, fmt, size, backing=None):
        counted = allocation.data_bytes(
            path, fmt, size, backing, 'raw' if backing else None)
        self.assertIsNotNone(counted)
        self.assertEqual(self.measured_data(path, fmt, size), counted)
        return counted

    def test_data_extents(self):
        disk = self.raw('disk', 64 * Mi, [(Mi, 8 * Ki), (10 * Mi, Mi)])
        fd = os.open(disk, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        self.assertEqual([(Mi, Mi + 8 * Ki), (10 * Mi, 11 * Mi)],
                         list(allocation.data_extents(fd, 64 * Mi)))
        # Clipped to the limit.
        self.assertEqual([(Mi, Mi + 4 * Ki)],
                         list(allocation.data_extents(fd, Mi + 4 * Ki)))
        self.assertEqual([], list(allocation.data_extents(fd, Mi)))

    def test_raw_file(self):
        disk = self.raw('disk', 64 * Mi, [(0, 100), (3 * Mi + 5, 200 * Ki),
                                          (40 * Mi, 3 * Mi)])
        self.assertEqual(
            (1 + 4 + 48) * 64 * Ki,
            self.assert_counts_like_qemu_img(disk, 'raw', 64 * Mi))

    def test_qcow2_without_backing_file(self):
        disk = self.qcow2('disk', 64 * Mi, ['write -P 1 0 1M',
                                            'write -P 2 10M 1',
                                            'write -z 20M 1M'])
        self.assertEqual(
            17 * 64 * Ki,
            self.assert_counts_like_qemu_img(disk, 'qcow2', 64 * Mi))

    def test_overlay_on_a_raw_base(self):
        # Over two L2 tables (512 MiB each): the overlay rewrites part of
        # the base's data, hides some of it behind zero clusters, and
        # leaves the second table unallocated (all of it the base's).
        size = 1 * units.Gi
        base_file = self.raw('base', size, [
            (0, 3 * Mi), (100 * Mi, 3 * Mi), (700 * Mi, 3 * Mi),
            (600 * Mi + 12345, 3 * Mi)])
        disk = self.qcow2('disk', size, [
            'write -P 1 50M 10M', 'write -P 2 101M 1M', 'write -z 0 2M',
            'write -P 3 300M 64k', 'write -P 4 400M 1'], backing=base_file)
        base_clusters = 48 + 48 + 48 + 49
        overlay_clusters = 160 + 16 + 1 + 1
        hidden = 16 + 32
        self.assertEqual(
            (base_clusters + overlay_clusters - hidden) * 64 * Ki,
            self.assert_counts_like_qemu_img(disk, 'qcow2', size,
                                             base_file))

    def test_base_longer_than_the_overlay(self):
        base_file = self.raw('base', 64 * Mi, [(0, Mi), (40 * Mi, Mi)])
        disk = self.qcow2('disk', 32 * Mi, ['write -P 1 31M 64k'],
                          backing=base_file)
        self.assertEqual(17 * 64 * Ki, self.assert_counts_like_qemu_img(
            disk, 'qcow2', 32 * Mi, base_file))

    def test_qcow2_version_2(self):
        base_file = self.raw('base', 64 * Mi, [(0, Mi)])
        disk = self.qcow2('disk', 64 * Mi, ['write -P 1 512k 1M'],
                          backing=base_file, options={'compat': '0.10'})
        self.assertEqual(24 * 64 * Ki, self.assert_counts_like_qemu_img(
            disk, 'qcow2', 64 * Mi, base_file))

    def test_dirty_lazy_refcounts_are_read(self):
        disk = self.qcow2('disk', 64 * Mi, options={'lazy_refcounts': 'on'})
        # qemu-io -c 'abort' leaves the image with its dirty bit set.
        processutils.execute('qemu-io', '-f', 'qcow2', '-c',
                             'write -P 1 0 1M', '-c', 'abort', disk,
                             check_exit_code=False)
        with open(disk, 'rb') as f:
            f.seek(72)
            self.assertEqual(1, int.from_bytes(f.read(8), 'big') & 1)
        self.assertEqual(16 * 64 * Ki, allocation.data_bytes(
            disk, 'qcow2', 64 * Mi))

    def assert_left_to_qemu_img(self, path, fmt='qcow2', size=64 * Mi,
                                backing=None, backing_format=None):
        self.assertIsNone(allocation.data_bytes(path, fmt, size, backing,
                                                backing_format))

    def test_compressed_clusters_are_left_to_qemu_img(self):
        source = self.qcow2('source', 64 * Mi, ['write -P 1 0 1M'])
        disk = self.path('disk')
        qemu_img.convert(source, 'qcow2', disk, 'qcow2', compress=True)
        self.assert_left_to_qemu_img(disk)

    def test_other_cluster_sizes_are_left_to_qemu_img(self):
        disk = self.qcow2('disk', 64 * Mi, ['write -P 1 0 1M'],
                          options={'cluster_size': '131072'})
        self.assert_left_to_qemu_img(disk)

    def test_extended_l2_is_left_to_qemu_img(self):
        disk = self.qcow2('disk', 64 * Mi, ['write -P 1 0 1M'],
                          options={'extended_l2': 'on'})
        self.assert_left_to_qemu_img(disk)

    def test_external_data_file_is_left_to_qemu_img(self):
        disk = self.qcow2('disk', 64 * Mi, options={
            'data_file': self.path('data'), 'data_file_raw': 'on'})
        self.assert_left_to_qemu_img(disk)

    def test_a_qcow2_backing_file_is_left_to_qemu_img(self):
        base_file = self.qcow2('base', 64 * Mi, ['write -P 1 0 1M'])
        disk = self.qcow2('disk', 64 * Mi)
        self.assert_left_to_qemu_img(disk, backing=base_file,
                                     backing_format='qcow2')

    def test_a_backing_file_the_header_does_not_name(self):
        base_file = self.raw('base', 64 * Mi, [(0, Mi)])
        other = self.raw('other', 64 * Mi, [])
        disk = self.qcow2('disk', 64 * Mi, backing=base_file)
        # Told of no backing file, or of another one: a count would miss
        # the base's data.
        self.assert_left_to_qemu_img(disk)
        self.assert_left_to_qemu_img(disk, backing=other,
                                     backing_format='raw')
        # The same file by another name is the same file.
        os.symlink(base_file, self.path('base-link'))
        self.assertEqual(16 * 64 * Ki, allocation.data_bytes(
            disk, 'qcow2', 64 * Mi, self.path('base-link'), 'raw'))

    def test_a_backing_file_the_header_does_not_have(self):
        base_file = self.raw('base', 64 * Mi, [(0, Mi)])
        disk = self.qcow2('disk', 64 * Mi)
        self.assert_left_to_qemu_img(disk, backing=base_file,
                                     backing_format='raw')

    def test_a_relative_backing_file_name(self):
        self.raw('base', 64 * Mi, [(0, Mi)])
        disk = self.path('disk')
        processutils.execute('qemu-img', 'create', '-q', '-f', 'qcow2',
                             '-b', 'base', '-F', 'raw', disk, str(64 * Mi))
        self.assertEqual(16 * 64 * Ki, allocation.data_bytes(
            disk, 'qcow2', 64 * Mi, self.path('base'), 'raw'))

    def test_a_file_that_is_not_qcow2_is_left_to_qemu_img(self):
        disk = self.raw('disk', 64 * Mi, [(0, Mi)])
        self.assert_left_to_qemu_img(disk)

    def test_a_virtual_size_that_differs_is_left_to_qemu_img(self):
        disk = self.qcow2('disk', 64 * Mi)
        self.assert_left_to_qemu_img(disk, size=32 * Mi)

    def test_a_missing_file_is_left_to_qemu_img(self):
        self.assert_left_to_qemu_img(self.path('gone'))

    def test_other_formats_are_left_to_qemu_img(self):
        disk = self.raw('disk', 64 * Mi, [(0, Mi)])
        self.assert_left_to_qemu_img(disk, fmt='vmdk')


class RequestMeasureTestCase(base.BaseTestCase):
    """SnapshotRequest.measure: in-process where it can, qemu-img else."""

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)
        self.base = os.path.join(self.dir, 'base')
        with open(self.base, 'wb') as f:
            f.truncate(64 * Mi)
            f.write(os.urandom(Mi))
        self.disk = os.path.join(self.dir, 'disk')
        qemu_img.create(self.disk, 'qcow2', 64 * Mi, backing_file=self.base,
                        backing_fmt='raw')
        processutils.execute('qemu-io', '-f', 'qcow2', '-c',
                             'write -P 1 32M 2M', self.disk)

    def request(self):
        return snap_request.SnapshotRequest(
            guest=None, name='instance-1', uuid='u', instance=None,
            disk_path=self.disk, disk_dev='vda', disk_source_type='file',
            source_format='qcow2', source_type='qcow2',
            virtual_size=64 * Mi, backing_file=self.base,
            backing_format='raw', power_state=1, image_format='qcow2',
            compress=False, image_properties={},
            snapshots_directory=self.dir, virt_type='kvm')

    def test_qcow2_measured_in_process(self):
        real = qemu_img.measure(self.disk, 'qcow2', 'qcow2')
        with mock.patch.object(snap_request.qemu_img, 'measure') as measure:
            measured = self.request().measure('qcow2')
        measure.assert_not_called()
        self.assertEqual(space.qcow2_size_bound(64 * Mi, 3 * Mi), measured)
        # Never below qemu-img's answer, and at most a few clusters above.
        self.assertGreaterEqual(measured, real)
        self.assertLess(measured, real + Mi)

    def test_other_formats_run_qemu_img(self):
        request = self.request()
        with mock.patch.object(snap_request.qemu_img, 'measure',
                               return_value=123) as measure:
            self.assertEqual(123, request.measure('vmdk'))
            self.assertEqual(123, request.measure('vmdk'))
        measure.assert_called_once_with(self.disk, 'qcow2', 'vmdk')
