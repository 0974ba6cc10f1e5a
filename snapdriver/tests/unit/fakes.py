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

"""Stand-ins for logic-only unit tests."""

import dataclasses
import shutil

import fixtures
from nova.compute import power_state

from snapdriver import request as snap_request


def make_request(**overrides):
    """A SnapshotRequest of a running guest on a qcow2 overlay."""
    values = dict(
        guest=None, name='instance-00000001',
        uuid='4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11', instance=None,
        disk_path='/var/lib/nova/instances/x/disk', disk_dev='vda',
        disk_source_type='file', source_format='qcow2',
        source_type='qcow2', virtual_size=1 << 30,
        backing_file='/var/lib/nova/instances/_base/abc',
        backing_format='raw', power_state=power_state.RUNNING,
        image_format='qcow2', compress=False, image_properties={},
        snapshots_directory='/var/lib/nova/instances/snapshots',
        virt_type='kvm', driver=None)
    values.update(overrides)
    return snap_request.SnapshotRequest(**values)


def replace(request, **changes):
    return dataclasses.replace(request, **changes)


def qemu_img_dir(test):
    """Skip ``test`` without qemu-img; else return a temporary directory.

    For the unit tests that run the real qemu-img on tiny images.
    """
    if shutil.which('qemu-img') is None:
        test.skipTest('qemu-img is not installed (tools/setup-host.sh '
                      'installs it)')
    return test.useFixture(fixtures.TempDir()).path
