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

"""stock: the inherited LibvirtDriver.snapshot(), unchanged.

Keeps Nova's behaviour for what the other strategies do not handle: RBD's
direct snapshot (a Ceph clone), LVM, ploop and future backends.
"""

from snapdriver.strategies import base


class Stock(base.SnapshotStrategy):

    description = ("Nova's own libvirt snapshot (live or cold as Nova "
                   "decides); covers RBD, LVM and ploop disks.")
    delegates_to_driver = True

    def unsupported_reason(self, request):
        if request.driver is None:
            return 'stock runs only inside nova-compute'
        return None

    def space_needed(self, request):
        return 0

    def capture(self, request, out_path, run):
        raise NotImplementedError(
            'stock delegates the whole snapshot to LibvirtDriver.snapshot()')
