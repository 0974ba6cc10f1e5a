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

"""live-shallow-rebase: a live snapshot through a shallow block copy.

The root disk is mirrored onto a new qcow2 overlay that has the same
backing file (so only the top layer is copied), the job is ended once the
mirror is in sync, and the overlay is flattened into the image. The guest
never stops and, unlike the stock driver, the domain is never undefined:
libvirt runs the copy as a transient job on the persistent domain.
"""

import os
import time

import libvirt
import nova.privsep.path
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import fileutils
from oslo_utils import units

from snapdriver import conf
from snapdriver import exception
from snapdriver import guest_state
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver.strategies import base
from snapdriver.strategies import checks

LOG = logging.getLogger(__name__)
CONF = conf.CONF

DEST_XML = """<disk type='file'>
  <driver type='qcow2'/>
  <source file='%s'/>
</disk>"""


def _xml_escape(value):
    return (value.replace('&', '&amp;').replace("'", '&apos;')
            .replace('<', '&lt;').replace('>', '&gt;'))


def mirror_of(request):
    """Return the destination file of the root disk's mirror, or None."""
    disk = request.guest.get_disk(request.disk_dev)
    if disk is None or disk.mirror is None:
        return None
    # NOTE: nova's LibvirtConfigGuestDiskMirror keeps only 'ready'; read the
    # destination from the live XML.
    elem = snap_request.root_disk_element(request)
    mirror = elem.find('mirror') if elem is not None else None
    if mirror is None:
        return None
    src = mirror.find('source')
    if src is not None and src.get('file'):
        return src.get('file')
    return mirror.get('file')


def is_ours(path, request):
    """True when ``path`` lies in one of snapdriver's work directories."""
    if not path:
        return False
    parent = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    workdir = os.path.basename(os.path.dirname(path))
    return (parent == os.path.abspath(request.snapshots_directory) and
            workdir.startswith(qemu_img.NAME_PREFIX))


def abort_quietly(dev, request):
    try:
        dev.abort_job()
    except libvirt.libvirtError as e:
        LOG.debug('Block job abort: %s', e, instance=request.instance)


def give_back(path):
    """Make nova-compute's user the owner of a file a block job used.

    NOTE: as the stock driver's live snapshot does (privsep chown of its
    delta to os.getuid()): where libvirt cannot remember a file's owner
    (no user xattrs, as on NFS, or remember_owner = 0) it gives the file
    of a finished job to root, and a nova-compute that does not run as
    root could then not flatten it in place (a write) nor read it. Only
    when needed, so a root nova-compute or the command never starts the
    privsep daemon for nothing.
    """
    uid = os.getuid()
    if os.stat(path).st_uid != uid:
        nova.privsep.path.chown(path, uid=uid)


def wait_ready(request, dev, run, job='copy'):
    """Wait until the block job of ``dev`` is ready (mirror in sync).

    NOTE: cur == end alone is not enough (Nova bug 1530275): the job is
    ready only when libvirt marks the mirror ready. A job that disappears
    before that failed or was aborted from outside; Nova's
    ``is_job_complete()`` would report it as complete.

    :raises: :class:`exception.BlockJobFailed`,
        :class:`exception.BlockJobTimeout`
    """
    timeout = CONF.snapdriver.block_job_timeout
    interval = CONF.snapdriver.block_job_poll_interval
    deadline = time.monotonic() + timeout
    while True:
        status = dev.get_job_info()
        if status is None:
            raise exception.BlockJobFailed(
                job=job, disk=request.disk_path,
                reason='the job disappeared before the mirror was ready')
        run.progress('mirror', status.cur, status.end)
        if status.end and status.cur == status.end:
            disk = request.guest.get_disk(request.disk_dev)
            if disk is not None and disk.mirror is not None and (
                    disk.mirror.ready == 'yes'):
                return
        if time.monotonic() >= deadline:
            raise exception.BlockJobTimeout(job=job, disk=request.disk_path,
                                            timeout=timeout)
        time.sleep(interval)


class LiveShallowRebase(base.SnapshotStrategy):

    description = ('No downtime: mirror the root disk onto a qcow2 overlay '
                   '(shallow block copy, transient job, the domain stays '
                   'persistent), end the job in sync, flatten the overlay.')
    guest_state = base.GUEST_LIVE
    #: snapdriver_point_in_time of its images (see snapdriver.provenance).
    point_in_time_is = 'end of the block copy job, with the mirror in sync'

    def unsupported_reason(self, request):
        reason = checks.first(checks.file_disk(request),
                              checks.output_format(request),
                              checks.live_state(request))
        if reason is not None:
            return reason
        if not hasattr(libvirt, 'VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB'):
            # NOTE: every libvirt Nova 34 supports (>= 8.0) has transient
            # block copy jobs, so the stock driver's undefine/redefine dance
            # is never needed; refuse rather than undefine a domain.
            return ('libvirt-python lacks transient block copy jobs, which '
                    'keep the domain persistent')
        return checks.live_quiesce(request)

    def _can_flatten_in_place(self, request):
        return request.image_format == 'qcow2' and not request.compress

    def space_needed(self, request):
        out = qemu_img.measure(request.disk_path, request.source_format,
                               request.image_format)
        if (self._can_flatten_in_place(request) and
                CONF.snapdriver.live_flatten != 'convert'):
            # The overlay can always grow into the image itself.
            return out
        top = qemu_img.info(request.disk_path, request.source_format,
                            force_share=True).disk_size or 0
        return out + top

    def _flatten_mode(self, request, delta):
        """Return 'convert' or 'in-place' ([snapdriver] live_flatten)."""
        if not self._can_flatten_in_place(request):
            return 'convert'
        mode = CONF.snapdriver.live_flatten
        if mode == 'auto':
            needed = qemu_img.measure(delta, 'qcow2', request.image_format)
            st = os.statvfs(os.path.dirname(delta))
            free = st.f_bavail * st.f_frsize
            margin = CONF.snapdriver.free_space_margin_mb * units.Mi
            mode = 'convert' if needed + margin <= free else 'in-place'
        LOG.info('Flattening the overlay of %(name)s: %(mode)s',
                 {'name': request.name, 'mode': mode},
                 instance=request.instance)
        return mode

    def clean_leftovers(self, request):
        dest = mirror_of(request)
        if dest is None or not is_ours(dest, request):
            return []
        dev = request.guest.get_block_device(request.disk_dev)
        abort_quietly(dev, request)
        LOG.warning('Aborted a block copy job onto %(dest)s left by an '
                    'interrupted snapshot', {'dest': dest},
                    instance=request.instance)
        return ['block copy job onto %s' % dest]

    def capture(self, request, out_path, run):
        delta = out_path + '.delta'
        with run.phase('overlay'):
            qemu_img.create(delta, 'qcow2', request.virtual_size,
                            backing_file=request.backing_file,
                            backing_fmt=request.backing_format)
        dev = request.guest.get_block_device(request.disk_dev)
        started = False
        try:
            with run.phase('mirror'):
                try:
                    dev.copy(DEST_XML % _xml_escape(delta), shallow=True,
                             reuse_ext=True, transient=True)
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    raise exception.BlockJobFailed(
                        job='copy', disk=request.disk_path, reason=str(e))
                started = True
                run.copy_begins()
                wait_ready(request, dev, run)
            # NOTE: the freeze is applied once the mirror is in sync, so it
            # lasts only as long as the job abort; ending the job without
            # pivot leaves the overlay holding the disk as of this instant.
            with run.phase('end-job'):
                with guest_state.quiesced(request, run.quiesce):
                    dev.abort_job()
                    started = False
                    run.point_in_time = time.time()
        except Exception:
            with excutils.save_and_reraise_exception():
                if started:
                    abort_quietly(dev, request)
                fileutils.delete_if_exists(delta)

        try:
            with run.phase('flatten'):
                give_back(delta)
                if self._flatten_mode(request, delta) == 'in-place':
                    # NOTE: rebasing onto nothing copies only the backing
                    # file's data into the overlay (its own data is already
                    # there), so the host never holds two copies; but QEMU
                    # reads the whole virtual disk to do it.
                    qemu_img.rebase(delta, 'qcow2', backing_file='')
                    os.rename(delta, out_path)
                else:
                    qemu_img.convert(delta, 'qcow2', out_path,
                                     request.image_format,
                                     compress=request.compress)
        finally:
            fileutils.delete_if_exists(delta)
