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

"""request.build: where the facts of the root disk come from."""

import os
from unittest import mock

import fixtures
import libvirt
from nova.virt.libvirt import guest as libvirt_guest
from oslo_utils import units
from oslotest import base

from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import space
from snapdriver.tests.unit import fakes

_XML = """<domain type='kvm'>
  <name>instance-00000001</name>
  <uuid>4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/nova/instances/x/disk'/>
      %s
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""
_BACKING = """<backingStore type='file' index='1'>
        <format type='raw'/>
        <source file='/var/lib/nova/instances/_base/abc'/>
        <backingStore/>
      </backingStore>"""


class BuildTestCase(base.BaseTestCase):

    def _guest(self, state, backing=_BACKING):
        dom = mock.Mock(spec=libvirt.virDomain)
        dom.XMLDesc.return_value = _XML % backing
        dom.info.return_value = [state, 0, 0, 1, 0]
        dom.name.return_value = 'instance-00000001'
        dom.UUIDString.return_value = '4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11'
        dom.blockInfo.return_value = [20 * units.Gi, units.Mi, units.Mi]
        return libvirt_guest.Guest(dom)

    def test_running_guest_is_described_by_libvirt_without_qemu_img(self):
        guest = self._guest(libvirt.VIR_DOMAIN_RUNNING)
        with mock.patch.object(qemu_img, 'info') as info:
            request = snap_request.build(guest, image_format='qcow2')
        info.assert_not_called()
        guest._domain.blockInfo.assert_called_once_with(
            '/var/lib/nova/instances/x/disk')
        self.assertEqual(20 * units.Gi, request.virtual_size)
        self.assertEqual('/var/lib/nova/instances/_base/abc',
                         request.backing_file)
        self.assertEqual('raw', request.backing_format)

    def test_paused_guest_without_backing_file(self):
        guest = self._guest(libvirt.VIR_DOMAIN_PAUSED,
                            backing='<backingStore/>')
        with mock.patch.object(qemu_img, 'info') as info:
            request = snap_request.build(guest, image_format='qcow2')
        info.assert_not_called()
        self.assertIsNone(request.backing_file)
        self.assertIsNone(request.backing_format)

    def test_shut_off_guest_is_described_by_its_header(self):
        guest = self._guest(libvirt.VIR_DOMAIN_SHUTOFF, backing='')
        info = mock.Mock(virtual_size=units.Gi, backing_file='/b',
                         backing_file_format='raw')
        with mock.patch.object(qemu_img, 'info',
                               return_value=info) as qemu_info:
            request = snap_request.build(guest, image_format='qcow2')
        qemu_info.assert_called_once_with(
            '/var/lib/nova/instances/x/disk', 'qcow2', force_share=True)
        guest._domain.blockInfo.assert_not_called()
        self.assertEqual(units.Gi, request.virtual_size)
        self.assertEqual('/b', request.header_backing_file())


class SizeBoundTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.base = os.path.join(self.dir, 'base')
        self.disk = os.path.join(self.dir, 'disk')
        for path, size in ((self.base, 3 * units.Mi), (self.disk, units.Mi)):
            with open(path, 'wb') as f:
                f.write(b'x' * size)

    def _request(self, **changes):
        changes.setdefault('disk_path', self.disk)
        changes.setdefault('backing_file', self.base)
        return fakes.make_request(**changes)

    def test_qcow2_bound_counts_both_layers(self):
        self.assertEqual(space.qcow2_size_bound(units.Gi, 4 * units.Mi),
                         self._request().size_bound('qcow2'))

    def test_raw_bound_is_the_virtual_size(self):
        self.assertEqual(units.Gi, self._request().size_bound('raw'))

    def test_no_bound_over_a_qcow2_backing_file(self):
        # Its own backing files would hold data not counted.
        self.assertIsNone(self._request(
            backing_format='qcow2').size_bound('qcow2'))

    def test_no_bound_of_a_vanished_file(self):
        self.assertIsNone(self._request(
            backing_file=os.path.join(self.dir, 'gone')).size_bound('qcow2'))

    def test_no_bound_of_a_disk_that_is_not_a_file(self):
        self.assertIsNone(self._request(
            disk_source_type='network').size_bound('qcow2'))
