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

"""The box benchmark's disk layout, image check and table (no box).

The image check runs the real ``qemu-img`` on small sparse images.
"""

import json
import os
import shutil
import subprocess

import fixtures
from oslo_utils import units
import testtools

from snapdriver.box import bench
from snapdriver.tests.functional import writer_guest

MIB = units.Mi


class LayoutTest(testtools.TestCase):

    def test_regions_follow_the_writer_region(self):
        layout = bench.Layout(2 * units.Gi, 0.75)
        self.assertEqual(768 * MIB, layout.half)
        self.assertEqual(bench.WRITER_REGION, layout.a)
        self.assertEqual(bench.WRITER_REGION + 768 * MIB, layout.b)
        self.assertEqual(1536 * MIB, layout.data_bytes)

    def test_guest_command_copies_a_to_b(self):
        layout = bench.Layout(units.Gi, 0.25)
        self.assertEqual(
            'dd if=/dev/vda of=/dev/vda bs=1M skip=256 seek=384 count=128 '
            'conv=fsync 2>&1', layout.guest_copy_command())

    def test_too_small_a_disk(self):
        e = self.assertRaises(ValueError, bench.Layout, units.Gi, 0.8)
        self.assertIn('1024 MiB disk cannot hold 256 MiB for the writer '
                      'and 818 MiB', str(e))

    def test_no_data(self):
        self.assertRaises(ValueError, bench.Layout, units.Gi, 0.0)


@testtools.skipIf(shutil.which('qemu-img') is None,
                  'qemu-img is not installed')
class CheckImageTest(testtools.TestCase):
    """A disk as the guest leaves it, converted by qemu-img, checked."""

    SIZE = 272 * MIB

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.layout = bench.Layout(self.SIZE, 0.05)
        self.root, self.digest = bench.make_root_image(self.dir,
                                                       self.layout, 7)
        self.run_id = 0x1234

    def _disk(self, blocks=3, copy=True, extra=None, corrupt_b=False):
        """A qcow2 image of the disk; the writer wrote ``blocks``."""
        raw = os.path.join(self.dir, 'disk.raw')
        subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                        self.root, raw], check=True)
        with open(raw, 'r+b') as f:
            for seq in range(1, blocks + 1):
                f.seek((seq - 1) * writer_guest.BLOCK_SIZE)
                f.write(writer_guest.expected_block(seq, self.run_id))
            if copy:
                f.seek(self.layout.a)
                data = f.read(self.layout.half)
                if corrupt_b:
                    data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
                f.seek(self.layout.b)
                f.write(data)
            if extra is not None:
                f.seek(extra)
                f.write(b'x')
        out = os.path.join(self.dir, 'image.qcow2')
        subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                        raw, out], check=True)
        os.unlink(raw)
        return out

    def test_root_image_holds_the_data_in_region_a_only(self):
        out = subprocess.run(['qemu-img', 'map', '-f', 'qcow2',
                              '--output=json', self.root], check=True,
                             capture_output=True, text=True).stdout
        data = [e for e in json.loads(out) if e['data']]
        self.assertEqual([(self.layout.a, self.layout.half)],
                         [(e['start'], e['length']) for e in data])

    def test_good_image(self):
        self.assertEqual(3, bench.check_image(
            self._disk(), 'qcow2', self.layout, self.digest, self.dir))
        # Its raw copy is gone.
        self.assertEqual(['image.qcow2', 'root.qcow2'],
                         sorted(os.listdir(self.dir)))

    def test_region_b_missing(self):
        e = self.assertRaises(AssertionError, bench.check_image,
                              self._disk(copy=False), 'qcow2', self.layout,
                              self.digest, self.dir)
        self.assertIn('data region B', str(e))

    def test_region_b_differs(self):
        self.assertRaises(AssertionError, bench.check_image,
                          self._disk(corrupt_b=True), 'qcow2', self.layout,
                          self.digest, self.dir)

    def test_data_after_the_regions(self):
        e = self.assertRaises(
            AssertionError, bench.check_image,
            self._disk(extra=self.SIZE - 1), 'qcow2', self.layout,
            self.digest, self.dir)
        self.assertIn('after the data regions', str(e))

    def test_torn_writer_prefix(self):
        image = self._disk(blocks=0, extra=2 * writer_guest.BLOCK_SIZE)
        e = self.assertRaises(AssertionError, bench.check_image, image,
                              'qcow2', self.layout, self.digest, self.dir)
        self.assertIn('neither empty nor a writer block', str(e))


def _run(label, total, to_upload=None, verified=True, size=2, fill=0.25,
         error=None):
    return {'size_gib': size, 'fill': fill, 'label': label,
            'verified': verified, 'error': error, 'total_seconds': total,
            'to_upload_seconds': to_upload, 'downtime_seconds': 0.0,
            'transient_seconds': 0.0, 'peak_extra_bytes': 10 * MIB,
            'image_bytes': 5 * MIB}


class AggregateTest(testtools.TestCase):

    def test_medians_and_ratios(self):
        runs = [_run('stock-live', 4.0, 2.0), _run('stock-live', 6.0, 3.0),
                _run('stock-live', 5.0, 2.5),
                _run('stock-cold', 10.0, 8.0),
                _run('live-backup', 2.0, 1.0), _run('live-backup', 3.0, 1.2),
                _run('cold-internal', 5.0, 4.0),
                _run('cold-internal', 99.0, 99.0, verified=False,
                     error='boom')]
        refs = [{'size_gib': 2, 'fill': 0.25, 'label': 'convert-qcow2',
                 'seconds': 0.5, 'command': 'c'},
                {'size_gib': 2, 'fill': 0.25, 'label': 'convert-qcow2',
                 'seconds': 0.7, 'command': 'c'},
                # A slower command: not the reference.
                {'size_gib': 2, 'fill': 0.25, 'label': 'convert-nova',
                 'seconds': 0.9, 'command': 'n'},
                # Another disk: not this one's reference.
                {'size_gib': 4, 'fill': 0.25, 'label': 'convert-nova',
                 'seconds': 0.1, 'command': 'n'}]
        rows = {r['label']: r for r in bench.aggregate(runs, refs)}
        self.assertEqual(5.0, rows['stock-live']['total_seconds'])
        self.assertEqual(1.0, rows['stock-live']['x_stock'])
        self.assertEqual(2.5, rows['live-backup']['total_seconds'])
        self.assertEqual(0.5, rows['live-backup']['x_stock'])
        self.assertEqual(2.0, rows['live-backup']['peak_x_image'])
        self.assertAlmostEqual(1.1 / 0.6,
                               rows['live-backup']['to_upload_x_convert'])
        # Cold cases against stock cold; the failed run is not counted.
        self.assertEqual(0.5, rows['cold-internal']['x_stock'])
        self.assertEqual((1, 2), (rows['cold-internal']['ok'],
                                  rows['cold-internal']['runs']))
        self.assertEqual(['boom'], rows['cold-internal']['errors'])

    def test_no_verified_run(self):
        rows = bench.aggregate([_run('live-backup', 1.0, verified=False)],
                               [])
        self.assertIsNone(rows[0]['total_seconds'])
        self.assertIsNone(rows[0]['x_stock'])
        text = bench.markdown(rows, [])
        self.assertIn('| 2 | 0.25 | live-backup | 0/1 | - | - |', text)
        self.assertTrue(text.endswith('| - | - | - |'), text)
