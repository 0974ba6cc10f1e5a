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

"""live-backup: a one-pass live snapshot through libvirt's backup API.

A backup job (``virDomainBackupBegin``) gives a point-in-time copy of the
running root disk, as of the job start: the data is read once (the stock
live snapshot reads it twice, mirror then flatten), no overlay is needed
and the domain definition is never changed, so the domain stays
persistent. Guest writes during the job are held back by QEMU's
copy-before-write filter, not by the guest. Two modes
(``[snapdriver] live_backup_mode``):

* push (default): QEMU writes the copy into a qcow2 target, which is the
  image itself or is converted to the requested format.
* pull: QEMU exports the disk as of the job start over NBD on
  a unix socket in the snapshot's work directory, and ``qemu-img convert``
  reads it straight into the image, in the requested format; the filter keeps
  the old data of the blocks the guest rewrites in a qcow2 scratch file.
  The job is ended (aborted: a pull job never completes) once the export
  is read. qemu-img reads with many requests in flight and writes through
  the page cache; the data crosses a socket, so it takes more CPU than
  push, which does the copy inside QEMU.

The filter makes the guest's writes depend on the scratch file or target:
libvirt (9.0 at least) starts the job without an ``on-cbw-error`` choice,
so QEMU uses ``break-guest-write`` and a failed copy fails the guest's
write, which QEMU's default error policy turns into a pause on ENOSPC.
That file's blocks are therefore reserved before the job starts
(:mod:`snapdriver.space`), and a guest that was paused by an I/O error
during the job anyway (an EIO from the work directory's storage) is
resumed once the job is gone, its held write then reaching the disk.
"""

from concurrent import futures
import datetime
import os
import secrets
import time
from xml.etree import ElementTree

import libvirt
from nova.compute import power_state
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import fileutils

from snapdriver import conf
from snapdriver import exception
from snapdriver import guest_state
from snapdriver import qemu_img
from snapdriver import runner
from snapdriver import space
from snapdriver.strategies import base
from snapdriver.strategies import checks
from snapdriver.strategies import live_shallow_rebase

LOG = logging.getLogger(__name__)
CONF = conf.CONF

#: libvirt added virDomainBackupBegin to its public API in 7.2.0.
MIN_LIBVIRT_VERSION = (7, 2, 0)
#: libvirt runs backups only on QEMU with -blockdev, 4.2 and later.
MIN_QEMU_VERSION = (4, 2, 0)

#: Seconds to wait for an aborted backup job to go away. libvirt's
#: abortJob() only asks QEMU to cancel the job; it ends a moment later.
ABORT_WAIT = 30

#: Name of the qcow2 backup target when the output needs a conversion.
BACKUP_TARGET_NAME = 'backup.qcow2'

#: Pull mode: the scratch file, and the directory (in the work directory)
#: of the NBD server's socket, and the socket.
SCRATCH_NAME = 'scratch.qcow2'
SOCKET_DIR_NAME = 'nbd'
SOCKET_NAME = 'sock'
#: Characters tempfile.mkdtemp adds to a work directory's prefix.
WORKDIR_RANDOM = 8


def _version_int(version):
    major, minor, micro = version
    return major * 1000000 + minor * 1000 + micro


def _version_str(number):
    return '%d.%d.%d' % (number // 1000000, number // 1000 % 1000,
                         number % 1000)


def unsupported_versions(dom):
    """Say why libvirt or QEMU cannot run a push-mode backup of ``dom``.

    :param dom: the ``libvirt.virDomain``.
    :returns: ``None`` when they can, else a reason.
    """
    if not hasattr(libvirt.virDomain, 'backupBegin'):
        return 'libvirt-python lacks virDomainBackupBegin'
    try:
        conn = dom.connect()
        lib_version = conn.getLibVersion()
        qemu_version = conn.getVersion()
    except libvirt.libvirtError as e:
        return 'cannot read the libvirt and QEMU versions: %s' % e
    if lib_version < _version_int(MIN_LIBVIRT_VERSION):
        return ('libvirt %s has no backup API (needs %s or later)' %
                (_version_str(lib_version),
                 '.'.join(str(v) for v in MIN_LIBVIRT_VERSION)))
    if qemu_version < _version_int(MIN_QEMU_VERSION):
        return ('QEMU %s cannot run libvirt backups (needs %s or later)' %
                (_version_str(qemu_version),
                 '.'.join(str(v) for v in MIN_QEMU_VERSION)))
    return None


def disk_targets(domain_xml):
    """Return the target names (``vda``...) of every disk of a domain."""
    root = ElementTree.fromstring(domain_xml)
    names = []
    for target in root.findall('./devices/disk/target'):
        dev = target.get('dev')
        if dev and dev not in names:
            names.append(dev)
    return names


def backup_xml(disk_dev, target_file, all_disks, socket=None):
    """Build the ``<domainbackup>`` of a backup of one disk.

    :param disk_dev: the disk to back up (``vda``).
    :param target_file: push mode: the qcow2 file QEMU writes the copy
        to; pull mode: the qcow2 scratch file QEMU keeps the old data of
        rewritten blocks in.
    :param all_disks: the target names of every disk of the domain; all
        but ``disk_dev`` are listed with ``backup='no'`` so that libvirt
        never adds them (with targets of its own choosing) to the job.
    :param socket: ``None`` for a push-mode backup; else a pull-mode
        backup whose NBD server listens on this unix socket and exports
        the disk under its target name (``exportname``).
    :returns: the XML document as a string.
    """
    mode = 'push' if socket is None else 'pull'
    root = ElementTree.Element('domainbackup', mode=mode)
    if socket is not None:
        ElementTree.SubElement(root, 'server', transport='unix',
                               socket=socket)
    disks = ElementTree.SubElement(root, 'disks')
    names = list(all_disks)
    if disk_dev not in names:
        names.insert(0, disk_dev)
    for name in names:
        if name != disk_dev:
            ElementTree.SubElement(disks, 'disk', name=name, backup='no')
            continue
        disk = ElementTree.SubElement(disks, 'disk', name=name,
                                      backup='yes', type='file')
        if socket is not None:
            # NOTE: the default export name is the target name too; set
            # it so the reader never depends on that default.
            disk.set('exportname', name)
        ElementTree.SubElement(disk, 'driver', type='qcow2')
        ElementTree.SubElement(disk, 'scratch' if socket else 'target',
                               file=target_file)
    return ElementTree.tostring(root, encoding='unicode')


def backup_targets(xml):
    """Return the files of the disks a ``<domainbackup>`` copies.

    The targets of a push-mode backup, the scratch files of a pull-mode
    one: the files in which QEMU writes for the job.
    """
    root = ElementTree.fromstring(xml)
    files = []
    for disk in root.findall('./disks/disk'):
        if disk.get('backup', 'yes') != 'yes':
            continue
        for tag in ('target', 'scratch'):
            elem = disk.find(tag)
            if elem is not None and elem.get('file'):
                files.append(elem.get('file'))
    return files


def _is_backup(stats):
    operation = stats.get('operation')
    return (operation is None or
            operation == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP)


def running_backup_targets(dom):
    """Return the target files of the domain's backup job, or ``[]``."""
    try:
        # NOTE: asking for the job first spares libvirt's error log a
        # "no domain backup job present" at every snapshot.
        stats = dom.jobStats(0)
        if (stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE) ==
                libvirt.VIR_DOMAIN_JOB_NONE or not _is_backup(stats)):
            return []
        xml = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        # VIR_ERR_NO_DOMAIN_BACKUP when the job just ended; any other
        # error (domain gone or shut off) means there is none either.
        return []
    return backup_targets(xml)


#: First wait between two checks that an aborted job is gone, in seconds;
#: doubled at each check up to ``[snapdriver] block_job_poll_interval``.
#: A pull-mode job is ended by an abort at every snapshot, and it is
#: usually gone within a few ms: a whole poll interval would be wasted.
ABORT_FIRST_POLL = 0.005


def _wait_backup_gone(dom, request):
    interval = CONF.snapdriver.block_job_poll_interval
    pause = min(ABORT_FIRST_POLL, interval)
    deadline = time.monotonic() + ABORT_WAIT
    while running_backup_targets(dom):
        if time.monotonic() >= deadline:
            LOG.warning('The aborted backup job of %(disk)s still runs '
                        'after %(t)s s', {'disk': request.disk_path,
                                          't': ABORT_WAIT},
                        instance=request.instance)
            return
        time.sleep(pause)
        pause = min(pause * 2, interval)


def abort_backup(dom, request, match):
    """Abort the domain's backup job if it writes to a file ``match`` likes.

    Never aborts a backup someone else started. Waits (at most
    :data:`ABORT_WAIT` seconds) until the job is gone, so that the next
    job on the domain can start.

    :param match: a callable taking a target path.
    :returns: the matching target path, or ``None`` if nothing was
        aborted.
    """
    ours = [t for t in running_backup_targets(dom) if match(t)]
    if not ours:
        return None
    try:
        dom.abortJob()
    except libvirt.libvirtError as e:
        # It may have ended on its own in between.
        LOG.debug('Backup job abort: %s', e, instance=request.instance)
    _wait_backup_gone(dom, request)
    return ours[0]


def _domain_gone(dom, error):
    """True when ``error`` means the domain vanished or stopped.

    The runner turns those errors into the exceptions Nova's compute
    manager expects (``InstanceNotFound``, ``GuestStoppedDuringSnapshot``),
    so they must reach it as they are.
    """
    code = error.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return True
    if code != libvirt.VIR_ERR_OPERATION_INVALID:
        return False
    try:
        return not dom.isActive()
    except libvirt.libvirtError:
        return True


def _job_stats(dom, request, flags=0):
    try:
        return dom.jobStats(flags)
    except libvirt.libvirtError as e:
        if _domain_gone(dom, e):
            raise
        raise exception.BlockJobFailed(job='backup', disk=request.disk_path,
                                       reason=str(e))


def wait_done(request, dom, run):
    """Wait until the domain's backup job ends; check how it ended.

    The running job is polled every ``[snapdriver]
    block_job_poll_interval`` seconds. Once it is gone, libvirt's record of
    the completed job tells success from failure: a job that disappears is
    not proof of success (it may have been aborted from outside).

    :raises: :class:`exception.BlockJobFailed` when the job failed, was
        cancelled, or left no record; :class:`exception.BlockJobTimeout`
        after ``[snapdriver] block_job_timeout`` seconds (the caller aborts
        the job).
    """
    timeout = CONF.snapdriver.block_job_timeout
    interval = CONF.snapdriver.block_job_poll_interval
    deadline = time.monotonic() + timeout
    while True:
        stats = _job_stats(dom, request)
        if (stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE) ==
                libvirt.VIR_DOMAIN_JOB_NONE or not _is_backup(stats)):
            # NOTE: another job may already have started after ours ended;
            # the completed-job record is still ours until that one ends.
            break
        run.progress('backup', stats.get('disk_processed', 0),
                     stats.get('disk_total', 0))
        if time.monotonic() >= deadline:
            raise exception.BlockJobTimeout(job='backup',
                                            disk=request.disk_path,
                                            timeout=timeout)
        time.sleep(interval)

    # NOTE: without VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED libvirt drops the
    # record once read, so a later snapshot never mistakes it for its own.
    done = _job_stats(dom, request, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    kind = done.get('type', libvirt.VIR_DOMAIN_JOB_NONE)
    if (kind == libvirt.VIR_DOMAIN_JOB_COMPLETED and _is_backup(done) and
            done.get('success', True)):
        run.progress('backup', done.get('disk_processed', 0),
                     done.get('disk_total', 0))
        return
    if kind == libvirt.VIR_DOMAIN_JOB_CANCELLED:
        what = 'cancelled (aborted from outside?)'
    elif kind == libvirt.VIR_DOMAIN_JOB_FAILED:
        what = 'failed'
    elif kind == libvirt.VIR_DOMAIN_JOB_NONE:
        what = 'ended and libvirt kept no record of its outcome'
    elif not _is_backup(done):
        what = 'ended, and the last completed job is not a backup'
    else:
        what = 'ended unsuccessfully (job type %s)' % kind
    errmsg = done.get('errmsg')
    raise exception.BlockJobFailed(
        job='backup', disk=request.disk_path,
        reason='the backup job %s%s' % (what,
                                        ': %s' % errmsg if errmsg else ''))


def resume_if_io_paused(dom, request):
    """Resume a guest that the job's I/O errors paused; say what happened.

    Only a guest that was running when the snapshot began and is now
    paused with reason ``VIR_DOMAIN_PAUSED_IOERROR`` is resumed: QEMU
    retries the held write then, straight to the disk once the job's
    copy-before-write filter is gone. A guest that was paused before keeps
    its state.

    :returns: ``None`` when the guest was not paused by an I/O error, else
        a sentence for the error message.
    """
    if request.power_state != power_state.RUNNING:
        return None
    try:
        state, reason = dom.state()
    except libvirt.libvirtError:
        return None
    if (state != libvirt.VIR_DOMAIN_PAUSED or
            reason != libvirt.VIR_DOMAIN_PAUSED_IOERROR):
        return None
    try:
        dom.resume()
    except libvirt.libvirtError as e:
        LOG.error('Guest %(name)s was paused by an I/O error during the '
                  'backup job and could not be resumed: %(err)s',
                  {'name': request.name, 'err': e},
                  instance=request.instance)
        return ('is still paused (resume failed: %s); check the storage of '
                'its disk and of [libvirt] snapshots_directory, then resume '
                'it with "virsh resume %s"' % (e, request.name))
    LOG.warning('Guest %(name)s was paused by an I/O error during the '
                'backup job (a write into the job\'s target or scratch file '
                'failed); it has been resumed', {'name': request.name},
                instance=request.instance)
    return ('was resumed; check the storage of [libvirt] '
            'snapshots_directory')


#: Seconds to wait, after the backup job ended, for QEMU to close the
#: target.
RELEASE_WAIT = 30


def qemu_pid(uuid):
    """Return the pid of the QEMU process running domain ``uuid``, or None.

    Found by its command line (``-uuid UUID``), which /proc shows to every
    user.
    """
    needle = uuid.lower().encode()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if b'-uuid' in argv and needle in (a.lower() for a in argv):
            return int(entry)
    return None


def holds_file(pid, path):
    """Say whether process ``pid`` has ``path`` open.

    :returns: True or False, or None when its descriptors cannot be read
        (another user's process, for a nova-compute that is not root).
    """
    try:
        wanted = os.stat(path)
    except OSError:
        return False
    fds = '/proc/%d/fd' % pid
    try:
        names = os.listdir(fds)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join(fds, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def wait_target_released(request, target):
    """Wait until QEMU has closed the backup target after the job ended.

    Also used for a pull-mode job's scratch file, which must be closed
    before the work directory (and the blocks reserved for it) is removed.

    NOTE: libvirt 9.0 records the completed job before its blockdev-del
    of the target, so :func:`wait_done` may return while QEMU still has
    the file open; it was closed every time in tests, but the image must
    never be read (checked, converted, uploaded) before, so wait for it.
    The QEMU process's /proc/PID/fd is readable by root (and QEMU's own
    user) only: a nova-compute running as another user cannot see it and
    relies on libvirt's order, as the stock driver does.

    :raises: :class:`exception.BlockJobFailed` when QEMU still holds it
        after :data:`RELEASE_WAIT` seconds.
    """
    pid = qemu_pid(request.uuid)
    if pid is None:
        return
    interval = CONF.snapdriver.block_job_poll_interval
    deadline = time.monotonic() + RELEASE_WAIT
    while True:
        held = holds_file(pid, target)
        if held is None:
            LOG.debug('Cannot read the descriptors of QEMU process %d: '
                      'not checking that it closed %s', pid, target,
                      instance=request.instance)
            return
        if not held:
            return
        if time.monotonic() >= deadline:
            raise exception.BlockJobFailed(
                job='backup', disk=request.disk_path,
                reason='QEMU still had %s open %d seconds after the '
                       'backup job ended' % (target, RELEASE_WAIT))
        LOG.debug('QEMU still has %s open after the backup job',
                  target, instance=request.instance)
        time.sleep(interval)


def pull_unusable_reason(disk_path):
    """Say why this process cannot read a pull-mode backup, or ``None``.

    QEMU creates the NBD server's socket as its own user and group, which
    under libvirt's dynamic ownership are the running disk's, with mode
    0775: connecting takes write permission, so root or a member of that
    group only. The same group is given the socket's directory.
    """
    if os.geteuid() == 0:
        return None
    try:
        gid = os.stat(disk_path).st_gid
    except OSError as e:
        return 'cannot read %s: %s' % (disk_path, e)
    if gid == os.getegid() or gid in os.getgroups():
        return None
    return ('this process is neither root nor in the group (gid %d) of '
            'the disk, in which QEMU creates the NBD socket' % gid)


#: sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
SOCKET_PATH_MAX = 107

#: Prefix of the short alias of a socket directory (see :func:`socket_path`).
SOCKET_ALIAS_PREFIX = qemu_img.NAME_PREFIX + 'nbd-'


def _alias_path(snapshots_directory):
    return os.path.join(snapshots_directory,
                        SOCKET_ALIAS_PREFIX + 'x' * 8, SOCKET_NAME)


def socket_fits(workdir_parent, workdir_name_length):
    """Say whether a pull backup's socket path can be short enough.

    :returns: True when the socket in the work directory, or else through
        its alias in ``workdir_parent`` (see :func:`socket_path`), stays
        within :data:`SOCKET_PATH_MAX` bytes.
    """
    direct = os.path.join(workdir_parent, 'w' * workdir_name_length,
                          SOCKET_DIR_NAME, SOCKET_NAME)
    return (len(os.fsencode(direct)) <= SOCKET_PATH_MAX or
            len(os.fsencode(_alias_path(workdir_parent))) <=
            SOCKET_PATH_MAX)


def socket_path(workdir, disk_path):
    """Create the directory of a pull backup's socket; return the path.

    QEMU binds the socket as its own user, so it needs write permission
    in the directory: a directory of its own inside the work directory
    (0710, traverse only), with the disk's group (QEMU's, under libvirt's
    dynamic ownership) and mode 0730, so that QEMU can create the socket
    but not list the directory, and no other user can enter it. The work
    directory itself stays unwritable to QEMU; nothing is world-writable.

    NOTE: a unix socket's path holds at most 107 bytes, and a work
    directory named ``snapdriver-<uuid>-<host>-<random>`` in Nova's
    ``/var/lib/nova/instances/snapshots`` is already about 100. Then the
    socket is named through a symbolic link to its directory, with a
    short name in the work directory's parent
    (``snapdriver-nbd-<random>``); the socket itself still lies in the
    work directory. The link is removed with :func:`remove_socket_alias`,
    and one that a killed process left dangles once the work directory is
    gone, which is how :func:`clean_socket_aliases` tells it.

    :returns: the socket's path, to give to libvirt and to qemu-img.
    """
    path = os.path.join(workdir, SOCKET_DIR_NAME)
    os.mkdir(path, 0o700)
    os.chown(path, -1, os.stat(disk_path).st_gid)
    os.chmod(path, 0o730)
    sock = os.path.join(path, SOCKET_NAME)
    if len(os.fsencode(sock)) <= SOCKET_PATH_MAX:
        return sock
    parent = os.path.dirname(os.path.abspath(workdir))
    target = os.path.join(os.path.basename(os.path.abspath(workdir)),
                          SOCKET_DIR_NAME)
    while True:
        alias = os.path.join(parent,
                             SOCKET_ALIAS_PREFIX + secrets.token_hex(4))
        try:
            os.symlink(target, alias)
            return os.path.join(alias, SOCKET_NAME)
        except FileExistsError:
            continue


def remove_socket_alias(sock):
    """Remove the symbolic link :func:`socket_path` may have made."""
    alias = os.path.dirname(sock)
    if (os.path.basename(alias).startswith(SOCKET_ALIAS_PREFIX) and
            os.path.islink(alias)):
        fileutils.delete_if_exists(alias)


def clean_socket_aliases(snapshots_directory, workdir_prefix):
    """Remove the socket aliases left by killed snapshots.

    Call it with the domain's snapshot lock held, before its stale work
    directories are removed: an alias into one of them (its name starts
    with ``workdir_prefix``) is a leftover, and so is an alias whose work
    directory is gone.

    :returns: the removed paths.
    """
    removed = []
    try:
        entries = os.listdir(snapshots_directory)
    except OSError:
        return removed
    for entry in sorted(entries):
        path = os.path.join(snapshots_directory, entry)
        if not (entry.startswith(SOCKET_ALIAS_PREFIX) and
                os.path.islink(path)):
            continue
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith(workdir_prefix) or not os.path.exists(path):
            fileutils.delete_if_exists(path)
            removed.append(path)
    return removed


def _utc(timestamp):
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat()


class LiveBackup(base.SnapshotStrategy):

    description = ('No downtime, one pass: a libvirt backup job gives a '
                   'point-in-time copy of the running root disk, read '
                   'over NBD by qemu-img (pull mode) or written by QEMU '
                   'into a qcow2 image (push mode); the domain definition '
                   'is never changed.')
    guest_state = base.GUEST_LIVE
    #: QEMU reads the disk for the job, through the chain libvirt opened.
    reads_disk_file = False
    #: snapdriver_point_in_time of its images (see snapdriver.provenance).
    point_in_time_is = 'start of the backup job'

    def unsupported_reason(self, request):
        reason = checks.first(checks.file_disk(request),
                              checks.output_format(request),
                              checks.live_state(request))
        if reason is not None:
            return reason
        reason = unsupported_versions(request.guest._domain)
        if reason is not None:
            return reason
        reason = space.unsupported_reason(request.snapshots_directory)
        if reason is not None:
            # NOTE: without a reservation a filesystem that fills up during
            # the job would pause the guest (see the module docstring);
            # live-shallow-rebase's mirror only fails its own job.
            return reason
        return checks.live_quiesce(request)

    def _mode(self, request):
        """Return ``'pull'`` or ``'push'``: how this snapshot copies."""
        if CONF.snapdriver.live_backup_mode != 'pull':
            return 'push'
        reason = pull_unusable_reason(request.disk_path)
        if reason is None and not socket_fits(
                request.snapshots_directory,
                len(runner.workdir_prefix(request)) + WORKDIR_RANDOM):
            reason = ('[libvirt] snapshots_directory %s is too long a path '
                      'for a unix socket in it' %
                      request.snapshots_directory)
        if reason is not None:
            LOG.debug('live-backup uses push mode: %s', reason,
                      instance=request.instance)
            return 'push'
        return 'pull'

    def _direct(self, request):
        """True when a push backup's target can be the output itself."""
        return request.image_format == 'qcow2' and not request.compress

    def _measure(self, request, fmt):
        return request.measure(fmt)

    def _target_reservation(self, request):
        # NOTE: in pull mode this bounds the scratch file as well: it gets
        # at most one copy of each cluster of the disk as of the job start
        # (only the first guest write to a cluster copies it), and clusters
        # that were holes or zeroes become zero clusters, metadata only.
        return space.reservation_for(self._measure(request, 'qcow2'))

    def _needed(self, request, size):
        backup = space.reservation_for(size(request, 'qcow2'))
        if self._mode(request) == 'pull':
            # The scratch file and the output that qemu-img writes.
            return backup + size(request, request.image_format)
        if self._direct(request):
            return backup
        # The qcow2 backup and the converted output exist together until
        # the conversion ends.
        return backup + size(request, request.image_format)

    def space_needed(self, request):
        return self._needed(request, self._measure)

    def space_bound(self, request):
        # NOTE: the exact sizes are then measured while the target is
        # created (_created_and_reserved), not before.
        def bound(request, fmt):
            value = request.size_bound(fmt)
            if value is None:
                raise LookupError(fmt)
            return value
        try:
            return self._needed(request, bound)
        except LookupError:
            return None

    def _created_and_reserved(self, request, path):
        """Create the qcow2 file QEMU writes for the job; reserve its blocks.

        The size of the reservation (already known when the preflight
        check measured it) is measured next to ``qemu-img create``: for
        the disks Nova makes it is counted in-process (a few ms), but
        any other disk runs ``qemu-img measure``, and the two processes
        would be most of the time before the job starts; neither needs
        the other.
        """
        with futures.ThreadPoolExecutor(max_workers=1) as pool:
            reservation = pool.submit(self._target_reservation, request)
            qemu_img.create_empty_qcow2(path, request.virtual_size)
            size = reservation.result()
        space.reserve(path, size, instance=request.instance)

    def clean_leftovers(self, request):
        # NOTE: a pull-mode job never ends on its own: one left by a killed
        # process runs (and holds its scratch file) until aborted here.
        # Its scratch file lies in our work directory like a push target.
        cleaned = []
        target = abort_backup(
            request.guest._domain, request,
            lambda path: live_shallow_rebase.is_ours(path, request))
        if target is not None:
            LOG.warning('Aborted a backup job onto %(target)s left by an '
                        'interrupted snapshot', {'target': target},
                        instance=request.instance)
            cleaned.append('backup job onto %s' % target)
        for alias in clean_socket_aliases(request.snapshots_directory,
                                          runner.workdir_prefix(request)):
            cleaned.append('socket alias %s' % alias)
        return cleaned

    def capture(self, request, out_path, run):
        if self._mode(request) == 'pull':
            with run.phase('backup'):
                self._pull(request, out_path, run)
            return
        direct = self._direct(request)
        if direct:
            target = out_path
        else:
            # NOTE: a raw backup target comes out fully allocated on the
            # host; a qcow2 one holds only the data, and one conversion
            # makes the requested format (or compression) from it.
            target = os.path.join(os.path.dirname(out_path),
                                  BACKUP_TARGET_NAME)
        try:
            with run.phase('backup'):
                self._backup(request, target, run)
            if not direct:
                with run.phase('convert'):
                    qemu_img.convert(target, 'qcow2', out_path,
                                     request.image_format,
                                     compress=request.compress)
        finally:
            if not direct:
                fileutils.delete_if_exists(target)

    def _begin(self, request, dom, xml, run):
        """Start the backup job within the guest's freeze, if any."""
        # NOTE: the copy holds the disk as of the job start, so the
        # freeze only needs to cover backupBegin: milliseconds.
        with guest_state.quiesced(request, run.quiesce):
            try:
                dom.backupBegin(
                    xml, None,
                    libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
            except libvirt.libvirtError as e:
                if _domain_gone(dom, e):
                    raise
                raise exception.BlockJobFailed(
                    job='backup', disk=request.disk_path, reason=str(e))
            run.point_in_time = time.time()
            run.copy_begins()
        LOG.info('Backup job of %(disk)s started: the image holds the '
                 'disk as of %(when)s', {'disk': request.disk_path,
                                         'when': _utc(run.point_in_time)},
                 instance=request.instance)

    def _on_failure(self, request, dom, target, error):
        """End the job of ``target`` and resume a guest it I/O-paused.

        Called in every failure path: a timeout, a failed poll or copy, a
        failed thaw, or a backupBegin that failed after the job was
        created.
        """
        if abort_backup(dom, request,
                        lambda path: path == target) is not None:
            LOG.warning('Aborted the backup job of %(disk)s',
                        {'disk': request.disk_path},
                        instance=request.instance)
        outcome = resume_if_io_paused(dom, request)
        if outcome is not None:
            # NOTE: replaces the job's error, which would say the guest
            # was not changed (excutils logs the original).
            raise exception.GuestPausedDuringSnapshot(
                job='backup', disk=request.disk_path, reason=error,
                outcome=outcome)

    def _backup(self, request, target, run):
        dom = request.guest._domain
        # NOTE: the target is created here, and reused by libvirt
        # (REUSE_EXTERNAL), rather than created by libvirt: libvirt would
        # create it as root, 0600, and give it back to root after the job,
        # unreadable to a nova-compute that does not run as root. A file
        # of ours is lent to QEMU for the job and given back to us.
        self._created_and_reserved(request, target)
        xml = backup_xml(request.disk_dev, target,
                         disk_targets(request.guest.get_xml_desc()))
        try:
            self._begin(request, dom, xml, run)
            # NOTE: once per process, while QEMU copies: lets the targets
            # of later snapshots of new disk sizes be written without a
            # qemu-img create before their jobs (never raises).
            qemu_img.confirm_empty_qcow2(os.path.dirname(target))
            wait_done(request, dom, run)
            wait_target_released(request, target)
        except Exception as e:
            with excutils.save_and_reraise_exception():
                self._on_failure(request, dom, target, e)
        else:
            # NOTE: a copy-before-write failure can also hit a job that
            # completes: the guest's write failed before its old data was
            # overwritten, so the image is good. Keep it; resume the guest
            # (logged as a warning).
            resume_if_io_paused(dom, request)

    def _pull(self, request, out_path, run):
        """Copy the disk through a pull-mode backup job into ``out_path``.

        The job's NBD server exports the disk as of the job start (QEMU's
        copy-before-write filter keeps the old data of every block the
        guest rewrites in the scratch file); qemu-img reads the export
        into the image in the requested format, skipping holes; then the
        job is ended: a pull-mode job only ends when it is aborted.
        """
        dom = request.guest._domain
        workdir = os.path.dirname(out_path)
        scratch = os.path.join(workdir, SCRATCH_NAME)
        # NOTE: created here (REUSE_EXTERNAL) for the reason _backup gives,
        # and so that its blocks can be reserved before the job: the
        # scratch file is where the guest's writes now depend on free
        # space. Its backing is the disk, which libvirt sets at attach.
        self._created_and_reserved(request, scratch)
        socket = socket_path(workdir, request.disk_path)
        try:
            self._pull_job(request, dom, scratch, socket, out_path, run)
        finally:
            remove_socket_alias(socket)

    def _pull_job(self, request, dom, scratch, socket, out_path, run):
        xml = backup_xml(request.disk_dev, scratch,
                         disk_targets(request.guest.get_xml_desc()),
                         socket=socket)
        try:
            self._begin(request, dom, xml, run)
            # NOTE: the copy is the job's work: it is bounded by the job's
            # timeout, not by qemu_img_timeout.
            timeout = CONF.snapdriver.block_job_timeout
            # NOTE: qemu-img reports no progress we read; say where the
            # copy starts and ends, as a push job's polls do.
            run.progress('backup', 0, request.virtual_size)
            try:
                qemu_img.convert_from_nbd(
                    qemu_img.nbd_unix_uri(socket, request.disk_dev),
                    out_path, request.image_format,
                    compress=request.compress, timeout=timeout)
            except exception.QemuImgTimeout:
                raise exception.BlockJobTimeout(
                    job='backup', disk=request.disk_path, timeout=timeout)
            # The export was read whole while the job ran only if the job
            # still runs now (one aborted from outside could also end
            # between two reads of a retrying client): abort_backup finds
            # it before ending it.
            if abort_backup(dom, request,
                            lambda path: path == scratch) is None:
                raise exception.BlockJobFailed(
                    job='backup', disk=request.disk_path,
                    reason='the pull-mode backup job ended before its '
                           'export was read (aborted from outside?)')
            wait_target_released(request, scratch)
            run.progress('backup', request.virtual_size,
                         request.virtual_size)
        except Exception as e:
            with excutils.save_and_reraise_exception():
                self._on_failure(request, dom, scratch, e)
        else:
            _drop_completed_record(dom)
            # NOTE: as in _backup: a failed copy-before-write held back a
            # guest write but left the export's data intact.
            resume_if_io_paused(dom, request)


def _drop_completed_record(dom):
    """Read (and so drop) libvirt's record of the pull job's end.

    A pull-mode job ends by an abort, which libvirt records as a job that
    ended with "Operation canceled"; a later push-mode snapshot reads its
    own record, not this one, but a left record would still mislead a
    person reading ``virsh domjobinfo --completed``.
    """
    try:
        dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        pass
