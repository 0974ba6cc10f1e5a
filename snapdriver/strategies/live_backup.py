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

A push-mode backup (``virDomainBackupBegin``) has QEMU write a
point-in-time copy of the running root disk, as of the job start, straight
into a qcow2 file: the data is read once (the stock live snapshot reads it
twice, mirror then flatten), no overlay is needed and the domain definition
is never changed, so the domain stays persistent. Guest writes during the
job are held back by QEMU's copy-before-write filter, not by the guest.

That filter makes the guest's writes depend on the target: libvirt (9.0
at least) starts the job without an ``on-cbw-error`` choice, so QEMU uses
``break-guest-write`` and a failed copy into the target fails the guest's
write, which QEMU's default error policy turns into a pause on ENOSPC. The
target's blocks are therefore reserved before the job starts
(:mod:`snapdriver.space`), and a guest that was paused by an I/O error
during the job anyway (an EIO from the work directory's storage) is
resumed once the job is gone, its held write then reaching the disk.
"""

import datetime
import os
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


def backup_xml(disk_dev, target_file, all_disks):
    """Build the ``<domainbackup>`` of a push backup of one disk.

    :param disk_dev: the disk to back up (``vda``).
    :param target_file: the qcow2 file QEMU writes the copy to.
    :param all_disks: the target names of every disk of the domain; all
        but ``disk_dev`` are listed with ``backup='no'`` so that libvirt
        never adds them (with targets of its own choosing) to the job.
    :returns: the XML document as a string.
    """
    root = ElementTree.Element('domainbackup', mode='push')
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
        ElementTree.SubElement(disk, 'driver', type='qcow2')
        ElementTree.SubElement(disk, 'target', file=target_file)
    return ElementTree.tostring(root, encoding='unicode')


def backup_targets(xml):
    """Return the target files of the disks a ``<domainbackup>`` copies."""
    root = ElementTree.fromstring(xml)
    files = []
    for disk in root.findall('./disks/disk'):
        if disk.get('backup', 'yes') != 'yes':
            continue
        target = disk.find('target')
        if target is not None and target.get('file'):
            files.append(target.get('file'))
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


def _wait_backup_gone(dom, request):
    interval = CONF.snapdriver.block_job_poll_interval
    deadline = time.monotonic() + ABORT_WAIT
    while running_backup_targets(dom):
        if time.monotonic() >= deadline:
            LOG.warning('The aborted backup job of %(disk)s still runs '
                        'after %(t)s s', {'disk': request.disk_path,
                                          't': ABORT_WAIT},
                        instance=request.instance)
            return
        time.sleep(interval)


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
                'backup job (a write into the snapshot target failed); it '
                'has been resumed', {'name': request.name},
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
                reason='QEMU still had the backup target %s open %d '
                       'seconds after the job ended' % (target,
                                                        RELEASE_WAIT))
        LOG.debug('QEMU still has %s open after the backup job',
                  target, instance=request.instance)
        time.sleep(interval)


def _utc(timestamp):
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat()


class LiveBackup(base.SnapshotStrategy):

    description = ('No downtime, one pass: a libvirt push-mode backup '
                   'writes a point-in-time copy of the running root disk '
                   'straight into a qcow2 image; the domain definition is '
                   'never changed.')
    guest_state = base.GUEST_LIVE
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

    def _direct(self, request):
        """True when the backup target can be the output itself."""
        return request.image_format == 'qcow2' and not request.compress

    def _target_reservation(self, request):
        return space.reservation_for(qemu_img.measure(
            request.disk_path, request.source_format, 'qcow2'))

    def space_needed(self, request):
        backup = self._target_reservation(request)
        if self._direct(request):
            return backup
        # The qcow2 backup and the converted output exist together until
        # the conversion ends.
        return backup + qemu_img.measure(request.disk_path,
                                         request.source_format,
                                         request.image_format)

    def clean_leftovers(self, request):
        target = abort_backup(
            request.guest._domain, request,
            lambda path: live_shallow_rebase.is_ours(path, request))
        if target is None:
            return []
        LOG.warning('Aborted a backup job onto %(target)s left by an '
                    'interrupted snapshot', {'target': target},
                    instance=request.instance)
        return ['backup job onto %s' % target]

    def capture(self, request, out_path, run):
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

    def _backup(self, request, target, run):
        dom = request.guest._domain
        # NOTE: the target is created here, and reused by libvirt
        # (REUSE_EXTERNAL), rather than created by libvirt: libvirt would
        # create it as root, 0600, and give it back to root after the job,
        # unreadable to a nova-compute that does not run as root. A file
        # of ours is lent to QEMU for the job and given back to us.
        qemu_img.create(target, 'qcow2', request.virtual_size)
        space.reserve(target, self._target_reservation(request),
                      instance=request.instance)
        xml = backup_xml(request.disk_dev, target,
                         disk_targets(request.guest.get_xml_desc()))
        try:
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
            wait_done(request, dom, run)
            wait_target_released(request, target)
        except Exception as e:
            with excutils.save_and_reraise_exception():
                # Every failure path ends the job: a timeout, a failed
                # poll, a failed thaw, or a backupBegin that failed after
                # the job was created.
                if abort_backup(dom, request,
                                lambda path: path == target) is not None:
                    LOG.warning('Aborted the backup job of %(disk)s',
                                {'disk': request.disk_path},
                                instance=request.instance)
                outcome = resume_if_io_paused(dom, request)
                if outcome is not None:
                    # NOTE: replaces the job's error, which would say the
                    # guest was not changed (excutils logs the original).
                    raise exception.GuestPausedDuringSnapshot(
                        job='backup', disk=request.disk_path, reason=e,
                        outcome=outcome)
        else:
            # NOTE: a copy-before-write failure can also hit a job that
            # completes: the guest's write failed before its old data was
            # overwritten, so the image is good. Keep it; resume the guest
            # (logged as a warning).
            resume_if_io_paused(dom, request)
