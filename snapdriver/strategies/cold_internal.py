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

"""cold-internal: a cold snapshot through a qcow2 internal snapshot.

The guest is managed-saved and an internal snapshot of its disk is created
(``qemu-img snapshot -c``): it holds the disk exactly as it was at the
managed save. The guest is then restored at once, and the internal snapshot
is extracted (``qemu-img convert -U -l snapshot.name=...``; ``-s`` was
removed in QEMU 3.0) while the guest runs: QEMU copies every cluster and
table the snapshot shares before it writes to it, so what the snapshot
holds never changes under the reader. The guest is down only for the
managed save, the snapshot's creation and the restore, however large the
disk. Libvirt deletes the internal snapshot afterwards through the running
QEMU (its record is defined for that moment only, with
``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE``).

Each guest write to a cluster the snapshot shares takes a new cluster in
the disk's filesystem until the snapshot is deleted: at most the disk
file's allocated size again. When the filesystem has not that much free
(beside the image, when the work directory is on it too), the guest stays
managed-saved until the extract is done, as in the historical order
(managed-save, create, extract, delete, restore), so that a full
filesystem can never pause it. A guest that is shut off is extracted the
same way, with no restore.
"""

import glob
import os
import time
from xml.etree import ElementTree

import libvirt
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import fileutils
from oslo_utils import units
from oslo_utils import uuidutils

from snapdriver import exception
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
                   'snapshot, restore the guest, extract the snapshot '
                   'while the guest runs, delete it.')
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

        The disk is repaired (``qemu-img check -r all``) when a killed
        snapshot was changing its snapshot table (:data:`INFLIGHT`); only
        while the domain does not run (shut off, or managed-saved by a
        killed snapshot): qemu-img can open its disk then. The internal
        snapshots (and libvirt records) of a killed snapshot are deleted
        either way: by qemu-img, or through libvirt while the guest runs.
        """
        if not request.is_file_disk or request.source_format != 'qcow2':
            return []
        markers = self._inflight_markers(request)
        done = []
        if request.is_active:
            if markers:
                LOG.warning('A killed cold-internal snapshot was changing '
                            'the snapshot table of %(disk)s, and the guest '
                            'runs again: the disk may hold leaked clusters '
                            '(no data is at risk); "qemu-img check -r all" '
                            'repairs it while the guest is off',
                            {'disk': request.disk_path},
                            instance=request.instance)
        elif markers:
            report = qemu_img.repair(request.disk_path, 'qcow2')
            LOG.warning('Repaired %(disk)s after a killed cold-internal '
                        'snapshot: %(report)s', {'disk': request.disk_path,
                                                 'report': report},
                        instance=request.instance)
            for marker in markers:
                fileutils.delete_if_exists(marker)
            done.append('repaired %s' % request.disk_path)
        return done + ['internal snapshot %s' % name
                       for name in self._remove_leftovers(
                           request, request.is_active)]

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

    def _remove_leftovers(self, request, running):
        """Delete the internal snapshots a killed snapshot left.

        :param running: the domain runs (or is paused): its QEMU holds the
            disk.
        """
        removed = []
        dom = request.guest._domain if request.guest is not None else None
        names = [name for name in qemu_img.snapshot_list(
            request.disk_path, 'qcow2', force_share=running)
            if name.startswith(qemu_img.NAME_PREFIX)]
        if dom is not None:
            # NOTE: a record left by a process killed between the redefine
            # and the delete; libvirt deletes the snapshot with it.
            for snap in dom.listAllSnapshots(0):
                name = snap.getName()
                if not name.startswith(qemu_img.NAME_PREFIX):
                    continue
                if name in names:
                    snap.delete(0)
                    names.remove(name)
                    removed.append(name)
                else:
                    snap.delete(
                        libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        for name in names:
            if running:
                # NOTE: qemu-img cannot change a disk a running QEMU holds
                # locked: the QEMU deletes it, through libvirt.
                delete_while_running(request, name)
            else:
                qemu_img.snapshot_delete(request.disk_path, name, 'qcow2')
            removed.append(name)
        for name in removed:
            LOG.warning('Deleted internal snapshot %(name)s of %(disk)s '
                        'left by an interrupted snapshot',
                        {'name': name, 'disk': request.disk_path},
                        instance=request.instance)
        return removed

    def capture(self, request, out_path, run):
        marker = self._mark(os.path.dirname(out_path))
        # NOTE: the guest is managed-saved or shut off here. The internal
        # snapshots a killed run left were deleted by clean_leftovers,
        # before the guest was stopped, with the domain's snapshot lock
        # held since: no qemu-img snapshot -l of them in the downtime.
        name = qemu_img.NAME_PREFIX + uuidutils.generate_uuid(dashed=False)
        with run.phase('snapshot-create'):
            qemu_img.snapshot_create(request.disk_path, name, 'qcow2')
        running = False
        try:
            if (run.guest.suspended_at is not None and
                    self._room_to_run(request) and
                    self._can_delete_running(request, name)):
                with run.phase('restore'):
                    run.guest.release()
                running = True
                # NOTE: from here QEMU (through libvirt), not qemu-img,
                # changes the snapshot table: a kill no longer leaves a
                # half-written one.
                fileutils.delete_if_exists(marker)
            with run.phase('extract'):
                run.copy_begins()
                qemu_img.convert(request.disk_path, 'qcow2', out_path,
                                 request.image_format, snapshot_name=name,
                                 compress=request.compress,
                                 force_share=running)
        except Exception:
            with excutils.save_and_reraise_exception():
                # NOTE: a restore that failed part-way may have started
                # the guest all the same: then only its QEMU can delete.
                self._delete(request, name, run,
                             running or _is_active(request), quiet=True)
        else:
            self._delete(request, name, run, running)
            # NOTE: the marker stays when the delete failed: the next
            # snapshot (or service start) repairs and deletes.
            fileutils.delete_if_exists(marker)

    def _room_to_run(self, request):
        """True when the guest can run while the snapshot exists.

        Each guest write to a cluster the internal snapshot shares takes a
        new cluster: at most the disk file's allocated size again, in the
        disk's filesystem, where a write that finds no space pauses the
        guest. The image needs its own space too when the work directory
        shares that filesystem.
        """
        disk_dir = os.path.dirname(request.disk_path)
        try:
            rewrites = os.stat(request.disk_path).st_blocks * 512
            fs = os.statvfs(disk_dir)
            needed = rewrites
            if (os.stat(disk_dir).st_dev ==
                    os.stat(request.snapshots_directory).st_dev):
                bound = request.size_bound(request.image_format)
                needed += (bound if bound is not None
                           else request.measure(request.image_format))
        except (OSError, exception.QemuImgFailed) as e:
            LOG.info('Keeping the guest managed-saved for the extract: '
                     'cannot tell the free space of %(dir)s: %(err)s',
                     {'dir': disk_dir, 'err': e}, instance=request.instance)
            return False
        free = fs.f_bavail * fs.f_frsize
        if free < needed:
            LOG.info('Keeping the guest managed-saved for the extract: '
                     '%(dir)s has %(free)d MiB free, and the guest\'s '
                     'writes during it could take %(needed)d MiB',
                     {'dir': disk_dir, 'free': free // units.Mi,
                      'needed': needed // units.Mi},
                     instance=request.instance)
            return False
        return True

    def _can_delete_running(self, request, name):
        """True when libvirt will delete ``name`` while the guest runs.

        Tried while the guest is still managed-saved: libvirt must accept
        the snapshot's record for this domain (:func:`delete_while_running`
        defines it again for the delete). The record is dropped at once
        (metadata only; the internal snapshot stays), so the domain has
        none during the extract. Otherwise the guest stays saved and
        qemu-img deletes the snapshot, rather than a running guest keep an
        internal snapshot nothing could delete.
        """
        try:
            _record(request, name).delete(
                libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as e:
            LOG.info('Keeping the guest managed-saved for the extract: '
                     'libvirt would not delete its internal snapshot while '
                     'it runs: %s', e, instance=request.instance)
            return False
        return True

    def _delete(self, request, name, run, running, quiet=False):
        try:
            with run.phase('snapshot-delete'):
                if running:
                    delete_while_running(request, name)
                else:
                    qemu_img.snapshot_delete(request.disk_path, name,
                                             'qcow2')
        except Exception:
            if not quiet:
                raise
            LOG.exception('Could not delete internal snapshot %(name)s of '
                          '%(disk)s; the next cold-internal snapshot of this '
                          'guest (or the service start) deletes it',
                          {'name': name, 'disk': request.disk_path},
                          instance=request.instance)


def _is_active(request):
    try:
        return bool(request.guest.is_active())
    except Exception:
        return False


def redefine_xml(name, domain_xml):
    """Build the record of an existing internal snapshot.

    For ``virDomainSnapshotCreateXML`` with
    ``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE``: libvirt only stores it (the
    snapshot exists in the disk already) and needs the domain's
    definition in it. It lists no disks: libvirt marks every qcow2 disk
    ``internal`` (it refuses a record in which some are not) and the
    read-only ones ``no``; QEMU then deletes the snapshot from the disks
    that have it.
    """
    root = ElementTree.Element('domainsnapshot')
    ElementTree.SubElement(root, 'name').text = name
    ElementTree.SubElement(root, 'state').text = 'shutoff'
    ElementTree.SubElement(root, 'creationTime').text = str(int(time.time()))
    ElementTree.SubElement(root, 'memory', snapshot='no')
    root.append(ElementTree.fromstring(domain_xml))
    return ElementTree.tostring(root, encoding='unicode')


def delete_while_running(request, name):
    """Delete internal snapshot ``name`` of a running guest's disk.

    qemu-img cannot write a disk a running QEMU holds locked; libvirt can
    have the QEMU delete it, but only a snapshot it has a record of: the
    record is defined (nothing changes in the disk) and the snapshot
    deleted with it at once.
    """
    _record(request, name).delete(0)


def _record(request, name):
    """Define libvirt's record of internal snapshot ``name``; return it."""
    dom = request.guest._domain
    return dom.snapshotCreateXML(
        redefine_xml(name, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
