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

import glob
import os

from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import fileutils
from oslo_utils import uuidutils

from snapdriver import qemu_img
from snapdriver import runner
from snapdriver.strategies import base
from snapdriver.strategies import checks

LOG = logging.getLogger(__name__)

#: A file in the work directory while qemu-img changes the disk's snapshot
#: table. NOTE: ``qemu-img snapshot -c`` killed part-way (QEMU 7.2) can
#: leave the clusters' refcounts raised and written without the snapshot
#: table entry: leaked clusters whose L2 entries keep the COPIED flag, which
#: ``qemu-img check`` reports as errors (no data is at risk: the refcounts
#: are too high, never too low). The cleaner repairs such a disk.
INFLIGHT = 'cold-internal-inflight'


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
        """Repair the disk and delete our internal snapshots.

        Only of a domain that does not run (shut off, or managed-saved by
        a killed snapshot): qemu-img can open its disk then. The disk is
        repaired (``qemu-img check -r all``) when a killed snapshot was
        changing its snapshot table (:data:`INFLIGHT`).
        """
        if not request.is_file_disk or request.source_format != 'qcow2':
            return []
        markers = self._inflight_markers(request)
        if request.is_active:
            if markers:
                LOG.warning('A killed cold-internal snapshot was changing '
                            'the snapshot table of %(disk)s, and the guest '
                            'runs again: the disk may hold leaked clusters '
                            '(no data is at risk); "qemu-img check -r all" '
                            'repairs it while the guest is off',
                            {'disk': request.disk_path},
                            instance=request.instance)
            return []
        done = []
        if markers:
            report = qemu_img.repair(request.disk_path, 'qcow2')
            LOG.warning('Repaired %(disk)s after a killed cold-internal '
                        'snapshot: %(report)s', {'disk': request.disk_path,
                                                 'report': report},
                        instance=request.instance)
            for marker in markers:
                fileutils.delete_if_exists(marker)
            done.append('repaired %s' % request.disk_path)
        return done + ['internal snapshot %s' % name
                       for name in self._remove_leftovers(request)]

    @staticmethod
    def _inflight_markers(request):
        return glob.glob(os.path.join(
            glob.escape(request.snapshots_directory),
            glob.escape(runner.workdir_prefix(request)) + '*', INFLIGHT))

    @staticmethod
    def _mark(workdir):
        """Write (fsynced) the marker before the snapshot table changes."""
        path = os.path.join(workdir, INFLIGHT)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(workdir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

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
        marker = self._mark(os.path.dirname(out_path))
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
            # NOTE: the marker stays when the delete failed: the next
            # snapshot (or service start) repairs and deletes.
            fileutils.delete_if_exists(marker)

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
