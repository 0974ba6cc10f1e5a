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

import os

from oslo_utils import importutils
from oslotest import base

from snapdriver.tests.functional import fixtures as func_fixtures

# Optional: without it every test skips with the reason.
libvirt = importutils.try_import('libvirt')


def _assert_clean(test, report):
    test.assertEqual(0, report['check-errors'], report)
    test.assertEqual(0, report.get('corruptions', 0), report)
    test.assertEqual(0, report.get('leaks', 0), report)


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
