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

"""cold-internal: the historical cold snapshot through a qcow2 internal
snapshot.

The guest is managed-saved, an internal snapshot is created, extracted with
``qemu-img convert -l snapshot.name=...`` (``-s`` was removed in QEMU 3.0)
and deleted on every exit path, then the guest is restored.
"""

from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import uuidutils

from snapdriver import qemu_img
from snapdriver.strategies import base
from snapdriver.strategies import checks

LOG = logging.getLogger(__name__)


class ColdInternal(base.SnapshotStrategy):

    description = ('Managed-save the guest, create a qcow2 internal '
                   'snapshot, extract it, delete it, restore the guest.')
    guest_state = base.GUEST_QUIET

    def unsupported_reason(self, request):
        reason = checks.first(checks.file_disk(request),
                              checks.output_format(request),
                              checks.cold_state(request))
        if reason is None and request.source_format != 'qcow2':
            reason = ('internal snapshots need a qcow2 disk; this one is %s'
                      % request.source_format)
        return reason

    def clean_leftovers(self, request):
        """Delete our internal snapshots from a domain that does not run.

        Shut off, or managed-saved by a killed snapshot: qemu-img can open
        its disk then.
        """
        if request.is_active or not request.is_file_disk or (
                request.source_format != 'qcow2'):
            return []
        return ['internal snapshot %s' % name
                for name in self._remove_leftovers(request)]

    def _remove_leftovers(self, request):
        # NOTE: only possible with the guest managed-saved or off: qemu-img
        # cannot open a disk a running QEMU holds locked.
        removed = []
        for name in qemu_img.snapshot_list(request.disk_path, 'qcow2'):
            if name.startswith(qemu_img.NAME_PREFIX):
                qemu_img.snapshot_delete(request.disk_path, name, 'qcow2')
                LOG.warning('Deleted internal snapshot %(name)s of %(disk)s '
                            'left by an interrupted snapshot',
                            {'name': name, 'disk': request.disk_path},
                            instance=request.instance)
                removed.append(name)
        return removed

    def capture(self, request, out_path, run):
        self._remove_leftovers(request)
        name = qemu_img.NAME_PREFIX + uuidutils.generate_uuid(dashed=False)
        with run.phase('snapshot-create'):
            qemu_img.snapshot_create(request.disk_path, name, 'qcow2')
        try:
            with run.phase('extract'):
                run.copy_begins()
                qemu_img.convert(request.disk_path, 'qcow2', out_path,
                                 request.image_format, snapshot_name=name,
                                 compress=request.compress)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._delete(request, name, run, quiet=True)
        else:
            self._delete(request, name, run)

    def _delete(self, request, name, run, quiet=False):
        try:
            with run.phase('snapshot-delete'):
                qemu_img.snapshot_delete(request.disk_path, name, 'qcow2')
        except Exception:
            if not quiet:
                raise
            LOG.exception('Could not delete internal snapshot %(name)s of '
                          '%(disk)s; the next cold-internal snapshot of this '
                          'guest deletes it',
                          {'name': name, 'disk': request.disk_path},
                          instance=request.instance)
