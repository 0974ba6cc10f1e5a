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

"""cold-direct-extract: convert a disk nothing writes, with no snapshot.

When the guest is shut off or managed-saved there is no concurrent writer,
so the disk's current state *is* the snapshot: it is converted directly,
without the internal snapshot create/extract/delete steps (upstream Nova
change "Remove unnecessary steps for cold snapshots").
"""

from snapdriver import qemu_img
from snapdriver.strategies import base
from snapdriver.strategies import checks


class ColdDirectExtract(base.SnapshotStrategy):

    description = ('Managed-save a running or paused guest (a shut-off one '
                   'stays off), convert its disk directly, restore it.')
    guest_state = base.GUEST_QUIET

    def unsupported_reason(self, request):
        return checks.first(checks.file_disk(request),
                            checks.output_format(request),
                            checks.cold_state(request))

    def capture(self, request, out_path, run):
        with run.phase('convert'):
            run.copy_begins()
            qemu_img.convert(request.disk_path, request.source_format,
                             out_path, request.image_format,
                             compress=request.compress)
