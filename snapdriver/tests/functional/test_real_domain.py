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

"""Prove the real-host fixtures on ``qemu:///system``."""

import json
import os
import struct
from xml.etree import ElementTree

import fixtures
from oslo_concurrency import processutils
from oslo_utils import importutils
from oslo_utils import units
from oslotest import base

from snapdriver.tests.functional import fixtures as func_fixtures

# Optional: without it every test skips with the reason.
libvirt = importutils.try_import('libvirt')


def _assert_clean(test, report):
    test.assertEqual([], func_fixtures.check_problems(report), report)


def leak_a_cluster(path):
    """Give one cluster past the end of a qcow2 image a refcount of 1.

    Nothing references that cluster: ``qemu-img check`` reports exactly
    one leaked cluster (exit code 3), and no corruption.
    """
    with open(path, 'r+b') as f:
        header = f.read(104)
        cluster_bits = struct.unpack('>I', header[20:24])[0]
        refcount_table = struct.unpack('>Q', header[48:56])[0]
        # Version 3 header; order 4: 16-bit refcounts (qemu-img default).
        assert struct.unpack('>I', header[96:100])[0] == 4
        cluster_size = 1 << cluster_bits
        cluster = -(-os.fstat(f.fileno()).st_size // cluster_size)
        # The first refcount block covers this cluster.
        assert cluster < cluster_size // 2
        f.truncate((cluster + 1) * cluster_size)
        f.seek(refcount_table)
        block = struct.unpack('>Q', f.read(8))[0]
        f.seek(block + 2 * cluster)
        f.write(struct.pack('>H', 1))


class ImagesEqualTestCase(base.BaseTestCase):
    """images_equal is strict about the virtual size."""

    def setUp(self):
        super().setUp()
        reason = func_fixtures.libvirt_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.dir = self.useFixture(fixtures.TempDir()).path

    def _raw(self, name, size, data=b''):
        path = os.path.join(self.dir, name)
        with open(path, 'wb') as f:
            f.truncate(size)
            os.pwrite(f.fileno(), data, units.Mi)
        return path

    def test_same_content_same_size_is_equal(self):
        data = os.urandom(64 * units.Ki)
        a = self._raw('a.raw', 4 * units.Mi, data)
        b = os.path.join(self.dir, 'b.qcow2')
        processutils.execute('qemu-img', 'convert', '-f', 'raw', '-O',
                             'qcow2', a, b)
        self.assertTrue(func_fixtures.images_equal(a, 'raw', b, 'qcow2'))
        self.assertTrue(func_fixtures.images_equal(b, 'qcow2', a, 'raw'))

    def test_zero_tail_of_a_larger_image_is_not_equal(self):
        # qemu-img compare without -s says "Images are identical".
        data = os.urandom(64 * units.Ki)
        small = self._raw('small.raw', 3 * units.Mi, data)
        large = self._raw('large.raw', 4 * units.Mi, data)
        self.assertFalse(func_fixtures.images_equal(small, 'raw',
                                                    large, 'raw'))
        self.assertFalse(func_fixtures.images_equal(large, 'raw',
                                                    small, 'raw'))

    def test_different_content_is_not_equal(self):
        a = self._raw('a.raw', 4 * units.Mi, b'a')
        b = self._raw('b.raw', 4 * units.Mi, b'b')
        self.assertFalse(func_fixtures.images_equal(a, 'raw', b, 'raw'))

    def test_format_is_never_probed(self):
        a = self._raw('a.raw', units.Mi)
        self.assertRaises(ValueError, func_fixtures.images_equal,
                          a, None, a, 'raw')
        self.assertRaises(ValueError, func_fixtures.images_equal,
                          a, 'raw', a, '')


class QemuImgCheckTestCase(base.BaseTestCase):
    """check_problems sees leaks, not only corruptions."""

    def setUp(self):
        super().setUp()
        reason = func_fixtures.libvirt_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'disk.qcow2')
        processutils.execute('qemu-img', 'create', '-q', '-f', 'qcow2',
                             self.path, str(4 * units.Mi))

    def test_clean_image(self):
        report = func_fixtures.qemu_img_check(self.path, 'qcow2')
        self.assertEqual(0, report['exit-code'])
        self.assertEqual([], func_fixtures.check_problems(report))

    def test_leaked_cluster_is_a_problem(self):
        leak_a_cluster(self.path)
        report = func_fixtures.qemu_img_check(self.path, 'qcow2')
        self.assertEqual(3, report['exit-code'])
        self.assertEqual(0, report.get('corruptions', 0))
        self.assertEqual(['qemu-img check exited 3', '1 leaked clusters'],
                         func_fixtures.check_problems(report))

    def test_check_errors_and_corruptions_are_problems(self):
        report = {'exit-code': 2, 'check-errors': 1, 'corruptions': 4}
        self.assertEqual(['qemu-img check exited 2', '1 check errors',
                          '4 corruptions'],
                         func_fixtures.check_problems(report))


class DiskImagesTestCase(base.BaseTestCase):
    """DiskImages needs only qemu-img and qemu-io, not libvirt."""

    def setUp(self):
        super().setUp()
        reason = func_fixtures.libvirt_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.images = self.useFixture(func_fixtures.DiskImages(seed=42))

    def test_reference_holds_the_overlay_content(self):
        with open(self.images.reference_path, 'rb') as f:
            reference = f.read()
        self.assertEqual(self.images.virtual_size, len(reference))
        self.assertEqual(
            self.images.expected_bytes(0, self.images.virtual_size),
            reference)
        self.assertTrue(func_fixtures.images_equal(
            self.images.overlay_path, 'qcow2',
            self.images.reference_path, 'raw'))

    def test_overlay_overwrites_part_of_the_base(self):
        self.assertFalse(func_fixtures.images_equal(
            self.images.base_path, 'raw',
            self.images.reference_path, 'raw'))

    def test_overlay_is_clean_without_internal_snapshots(self):
        _assert_clean(self, func_fixtures.qemu_img_check(
            self.images.overlay_path, 'qcow2'))
        self.assertEqual(
            [], func_fixtures.internal_snapshots(self.images.overlay_path))

    def test_workdir_is_private_but_traversable(self):
        self.assertEqual(0o711, os.stat(self.images.workdir).st_mode & 0o777)


class NovaLayoutTestCase(base.BaseTestCase):
    """DiskImages laid out as Nova's file backends do, filled to the most."""

    def setUp(self):
        super().setUp()
        reason = func_fixtures.libvirt_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.images = self.useFixture(func_fixtures.DiskImages(
            virtual_size=64 * units.Mi,
            data_size=int(64 * units.Mi * func_fixtures.DiskImages.MAX_FILL),
            seed=7, nova_layout=True))

    def test_base_in_underscore_base_and_disk_in_instance_dir(self):
        base_path, disk_path = func_fixtures.nova_disk_paths(
            self.images.instances_dir, self.images.instance_uuid,
            self.images.image_id)
        self.assertEqual((base_path, disk_path),
                         (self.images.base_path, self.images.overlay_path))
        self.assertEqual(os.path.join(self.images.instances_dir, '_base'),
                         os.path.dirname(base_path))
        self.assertEqual('disk', os.path.basename(disk_path))
        out, _err = processutils.execute(
            'qemu-img', 'info', '-f', 'qcow2', '--output=json', disk_path)
        info = json.loads(out)
        self.assertEqual(base_path, info['backing-filename'])
        self.assertEqual('raw', info['backing-filename-format'])

    def test_full_layout_reads_back(self):
        with open(self.images.reference_path, 'rb') as f:
            reference = f.read()
        self.assertEqual(
            self.images.expected_bytes(0, self.images.virtual_size),
            reference)
        # Data in both layers: the base alone is not the disk.
        self.assertFalse(func_fixtures.images_equal(
            self.images.base_path, 'raw', self.images.reference_path,
            'raw'))

    def test_more_than_the_layout_holds_is_refused(self):
        self.assertRaises(ValueError, func_fixtures.DiskImages,
                          virtual_size=64 * units.Mi,
                          data_size=48 * units.Mi + units.Mi)


class RealDomainTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        reason = func_fixtures.libvirt_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.images = self.useFixture(func_fixtures.DiskImages())

    def _domain(self, start_state):
        return self.useFixture(func_fixtures.RealDomain(
            images=self.images, start_state=start_state))

    def test_running_domain_is_running_and_persistent(self):
        domain = self._domain('running')

        self.assertEqual('running', domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertFalse(domain.has_managed_save())
        self.assertEqual(self.images.overlay_path, domain.disk_path)

    def test_paused_start_state_gives_paused(self):
        domain = self._domain('paused')

        self.assertEqual('paused', domain.state())
        self.assertTrue(domain.is_persistent())

    def test_disk_cache_and_io_modes_reach_qemu(self):
        domain = self.useFixture(func_fixtures.RealDomain(
            images=self.images, disk_cache='none', disk_io='native'))

        driver = ElementTree.fromstring(domain.dom.XMLDesc(0)).find(
            './devices/disk/driver')
        self.assertEqual(('none', 'native'),
                         (driver.get('cache'), driver.get('io')))

    def test_default_disk_modes_are_libvirts(self):
        domain = self._domain('shutoff')

        driver = ElementTree.fromstring(domain.dom.XMLDesc(0)).find(
            './devices/disk/driver')
        self.assertIsNone(driver.get('cache'))
        self.assertIsNone(driver.get('io'))

    def test_shutoff_start_state_only_defines(self):
        domain = self._domain('shutoff')

        self.assertEqual('shutoff', domain.state())
        self.assertTrue(domain.is_persistent())

    def test_managed_save_and_restore_keep_disk_and_definition(self):
        domain = self._domain('running')

        domain.dom.managedSave(0)

        self.assertEqual('shutoff', domain.state())
        self.assertTrue(domain.has_managed_save())
        self.assertTrue(domain.is_persistent())
        self.assertTrue(func_fixtures.images_equal(
            domain.disk_path, 'qcow2', self.images.reference_path, 'raw'))
        _assert_clean(self, func_fixtures.qemu_img_check(
            domain.disk_path, 'qcow2'))

        domain.dom.create()

        self.assertEqual('running', domain.state())
        self.assertFalse(domain.has_managed_save())
        self.assertTrue(domain.is_persistent())
        # The guest sits in the BIOS and writes nothing to its disk.
        self.assertTrue(func_fixtures.images_equal(
            domain.disk_path, 'qcow2', self.images.reference_path, 'raw',
            force_share=True))

    def test_cleanup_removes_domain_and_managed_save(self):
        conn = libvirt.open(func_fixtures.LIBVIRT_URI)
        self.addCleanup(conn.close)
        fixture = func_fixtures.RealDomain(images=self.images)
        fixture.setUp()
        try:
            fixture.dom.managedSave(0)
            self.assertTrue(fixture.has_managed_save())
        finally:
            fixture.cleanUp()

        self.assertNotIn(fixture.uuid,
                         [d.UUIDString() for d in conn.listAllDomains(0)])
