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

"""Run one strategy safely: preflight, leftovers, work dir, guest state,
capture, output check.

Used by the Nova driver, the ``snapdriver`` command and the benchmark, so
all three take snapshots the same way.
"""

import contextlib
import os
import shutil
import stat
import tempfile
import time

import libvirt
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import fileutils
from oslo_utils.imageutils import format_inspector
from oslo_utils import units
from oslo_utils import uuidutils

from snapdriver import conf
from snapdriver import exception
from snapdriver import guest_state
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver.strategies import base

LOG = logging.getLogger(__name__)
CONF = conf.CONF

#: Formats that are raw data to QEMU (no header it would interpret).
RAW_LIKE = ('raw', 'gpt', 'iso')


class SnapshotRun(object):
    """What happened during one snapshot: phases, downtime, freeze."""

    def __init__(self, request, strategy, progress=None):
        self.request = request
        self.strategy = strategy
        self.timings = {}
        self.guest = guest_state.GuestStateRecord()
        self.quiesce = {}
        self.point_in_time = None
        self.started = time.monotonic()
        #: ``time.monotonic()`` when the strategy's copy of the data began
        #: (the job started, the conversion launched): what comes before
        #: is the snapshot's fixed cost.
        self.copy_started = None
        self.finished = None
        self.output_bytes = None
        self._progress = progress

    @contextlib.contextmanager
    def phase(self, name):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = (self.timings.get(name, 0.0) +
                                  time.monotonic() - t0)

    def copy_begins(self):
        """Note that the copy of the data starts now; the first call counts.
        """
        if self.copy_started is None:
            self.copy_started = time.monotonic()

    def progress(self, phase, current, end):
        if self._progress is not None:
            self._progress(phase, current, end)

    @property
    def total(self):
        return (self.finished or time.monotonic()) - self.started

    def summary(self):
        return {
            'strategy': self.strategy.name,
            'total_seconds': round(self.total, 3),
            'downtime_seconds': round(self.guest.downtime, 3),
            'frozen_seconds': round(self.quiesce.get('frozen_seconds', 0), 3),
            'phases': {k: round(v, 3) for k, v in self.timings.items()},
            'output_bytes': self.output_bytes,
        }


def detect_formats(path):
    """Return the format inspectors whose format ``path`` holds.

    Like ``format_inspector.detect_file_format``, but a file matching
    several formats is returned as such instead of raising an untyped
    ``ImageFormatError``: a hybrid ISO (isohybrid installers) holds both
    GPT and ISO 9660 signatures, which are raw data to QEMU. Callers accept
    formats of :data:`RAW_LIKE` together and refuse any other mix.

    :returns: a non-empty list of inspectors (the raw one when nothing
        specific matched).
    """
    with open(path, 'rb') as f:
        wrapper = format_inspector.InspectWrapper(f)
        try:
            while wrapper.formats is None and wrapper.read(64 * units.Ki):
                pass
        finally:
            wrapper.close()
        return list(wrapper.formats or [])


def _names(inspectors):
    return ' and '.join(sorted(i.NAME for i in inspectors)) or 'raw'


def _raw_like(inspectors):
    return all(i.NAME in RAW_LIKE for i in inspectors)


def check_source(request, strategy=None):
    """Refuse a root disk whose content does not match what libvirt says.

    The format is never probed: a raw disk whose guest wrote a qcow2
    header must stay raw, and a qcow2 disk must not point at data files or
    backing files the domain does not know.

    :param strategy: the chosen strategy; the backing file the header
        names is compared with the domain's only when it opens the disk
        file itself (:attr:`~base.SnapshotStrategy.reads_disk_file`;
        always when ``None``).

    :raises: :class:`exception.DiskFormatMismatch`
    """
    path = request.disk_path
    if not os.access(path, os.R_OK):
        raise exception.DiskFormatMismatch(
            path=path, declared=request.source_format,
            actual='unreadable (missing or no permission)')
    found = detect_formats(path)
    actual = _names(found)
    declared = request.source_format
    if declared == 'raw':
        if not _raw_like(found):
            raise exception.DiskFormatMismatch(path=path, declared=declared,
                                               actual=actual)
        return
    if actual != declared:
        raise exception.DiskFormatMismatch(path=path, declared=declared,
                                           actual=actual)
    inspector = found[0]
    # NOTE: an instance disk normally has a backing file (its image in
    # _base), which format_inspector's backing_file check refuses and logs
    # as a warning on every snapshot. Skip that one check when we can; the
    # backing file is compared with the domain XML below instead. If
    # oslo.utils stops keeping checks in this dict, the failure is still
    # tolerated below, only with the log line back.
    checks = getattr(inspector, '_safety_checks', None)
    if isinstance(checks, dict):
        checks.pop('backing_file', None)
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        failures = dict(e.failures)
        failures.pop('backing_file', None)
        if failures:
            raise exception.DiskFormatMismatch(
                path=path, declared=declared,
                actual='%s with %s' % (actual, '; '.join(
                    str(v) for v in failures.values())))
    except format_inspector.ImageFormatError as e:
        raise exception.DiskFormatMismatch(path=path, declared=declared,
                                           actual='unparsable data (%s)' % e)
    if strategy is not None and not strategy.reads_disk_file:
        return
    # NOTE: the header must name the backing file the request carries
    # (libvirt's chain, for an active guest: a strategy that builds an
    # overlay on it, or converts the file, must see the same chain) and
    # the one the domain XML names, when it names one.
    expected = _xml_backing_file(request)
    header = request.header_backing_file()
    if ((expected is not None and expected != header) or
            header != request.backing_file):
        raise exception.DiskFormatMismatch(
            path=path, declared='%s on %s' % (
                declared, expected or request.backing_file),
            actual='%s on %s' % (actual, header))


def _xml_backing_file(request):
    elem = snap_request.root_disk_element(request)
    store = elem.find('backingStore/source') if elem is not None else None
    return store.get('file') if store is not None else None


def check_output(path, fmt, image_id=None):
    """Refuse an output image that is not a standalone image of ``fmt``.

    :raises: :class:`exception.UnsafeDiskImage`
    """
    found = detect_formats(path)
    actual = _names(found)
    ident = image_id or path
    if fmt == 'raw':
        if not _raw_like(found):
            raise exception.UnsafeDiskImage(
                image_id=ident,
                reason='raw output holds a %s header; the guest may have '
                       'written one to its disk' % actual)
        return
    if actual != fmt:
        raise exception.UnsafeDiskImage(
            image_id=ident, reason='output is %s, not %s' % (actual, fmt))
    inspector = found[0]
    try:
        inspector.safety_check()
    except (format_inspector.SafetyCheckFailed,
            format_inspector.ImageFormatError) as e:
        raise exception.UnsafeDiskImage(image_id=ident, reason=str(e))


def check_space(request, strategy):
    """Fail before the guest is touched when the work dir is too small.

    The strategy's in-process upper bound (:meth:`space_bound`) is used
    when it fits; otherwise the exact need is measured.

    :returns: the bytes the check accepted.
    :raises: :class:`exception.InsufficientSnapshotSpace`
    """
    st = os.statvfs(request.snapshots_directory)
    free = st.f_bavail * st.f_frsize
    margin = CONF.snapdriver.free_space_margin_mb * units.Mi
    bound = strategy.space_bound(request)
    if bound is not None and bound + margin <= free:
        return bound
    needed = strategy.space_needed(request)
    if needed + margin > free:
        raise exception.InsufficientSnapshotSpace(
            path=request.snapshots_directory,
            needed_mb=needed // units.Mi,
            margin_mb=CONF.snapdriver.free_space_margin_mb,
            free_mb=free // units.Mi)
    return needed


def host_label():
    """This host's name as work directories carry it (``[DEFAULT] host``).

    With ``[libvirt] snapshots_directory`` on shared storage (an
    instances_path shared for live migration), the name tells this host's
    work directories from the other hosts'.
    """
    return CONF.host.replace(os.sep, '_')


def workdir_prefix(request):
    """``snapdriver-<domain uuid>-<host>-``: the random part follows."""
    return '%s%s-%s-' % (qemu_img.NAME_PREFIX, request.uuid, host_label())


def parse_workdir_name(name):
    """Return ``(domain uuid, host)`` of a work directory name, or None.

    The host is ``''`` for a work directory of snapdriver before host names
    were added (``snapdriver-<uuid>-<random>``). The random part that
    ``tempfile.mkdtemp`` adds never holds a dash.
    """
    if not name.startswith(qemu_img.NAME_PREFIX):
        return None
    rest = name[len(qemu_img.NAME_PREFIX):]
    uuid, dash, tail = rest[:36], rest[36:37], rest[37:]
    if not (uuidutils.is_uuid_like(uuid) and dash == '-' and tail):
        return None
    host, _sep, _random = tail.rpartition('-')
    return uuid.lower(), host


def snapshot_lock(uuid, blocking=True):
    """The lock held for the whole snapshot of one domain on this host.

    An external (file) lock in ``[oslo_concurrency] lock_path``, so that
    nova-compute and the ``snapdriver`` command, which read the same
    nova.conf, never run two snapshots of one domain at once, and neither
    takes the other's running job or work directory for a leftover.

    :param blocking: wait for the lock; else raise
        ``oslo_concurrency.lockutils.AcquireLockFailedException`` at once
        when it is held.
    :raises: :class:`exception.LockPathRequired` when the option is unset.
    """
    lock_path = CONF.oslo_concurrency.lock_path
    if not lock_path:
        raise exception.LockPathRequired(instance=uuid)
    return lockutils.lock('snapdriver-snapshot-%s' % uuid.lower(),
                          external=True, lock_path=lock_path,
                          blocking=blocking)


@contextlib.contextmanager
def workdir(request, strategy):
    """A private work directory, removed on every exit path.

    Created 0700. A live strategy's files are opened by QEMU, which runs
    as its own user: then the directory's group becomes the disk's group
    (the QEMU user's group under libvirt's dynamic ownership) with 0710,
    traverse only. The stock driver used 0701 (any user may traverse) and,
    long ago, 0777.
    """
    fileutils.ensure_tree(request.snapshots_directory)
    path = tempfile.mkdtemp(prefix=workdir_prefix(request),
                            dir=request.snapshots_directory)
    try:
        if strategy.guest_state == base.GUEST_LIVE:
            _grant_qemu_traverse(path, request)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _grant_qemu_traverse(path, request):
    gid = os.stat(request.disk_path).st_gid
    try:
        os.chown(path, -1, gid)
        os.chmod(path, stat.S_IRWXU | stat.S_IXGRP)
    except PermissionError:
        # NOTE: without CAP_CHOWN and outside the disk's group, fall back to
        # what the stock driver does: traverse (not list) for others.
        os.chmod(path, stat.S_IRWXU | stat.S_IXOTH)


def workdir_uuids(snapshots_directory):
    """Return the domain uuids of this host's work directories."""
    if not os.path.isdir(snapshots_directory):
        return set()
    found = set()
    for entry in os.listdir(snapshots_directory):
        parsed = parse_workdir_name(entry)
        if parsed is not None and parsed[1] == host_label():
            found.add(parsed[0])
    return found


def clean_stale_workdirs(snapshots_directory, uuid, defined_here=True):
    """Remove the work directories killed snapshots of a domain left.

    Only this host's (:func:`host_label`): the others belong to snapshots
    other hosts run on shared storage. Call it with :func:`snapshot_lock`
    of the domain held.

    :param uuid: the domain.
    :param defined_here: the domain is defined on this host; then the work
        directories of older snapdriver versions (no host in their name)
        are its too.
    :returns: the removed paths.
    """
    removed = []
    if not os.path.isdir(snapshots_directory):
        return removed
    hosts = (host_label(), '') if defined_here else (host_label(),)
    for entry in sorted(os.listdir(snapshots_directory)):
        path = os.path.join(snapshots_directory, entry)
        parsed = parse_workdir_name(entry)
        if (parsed is not None and parsed[0] == uuid.lower() and
                parsed[1] in hosts and os.path.isdir(path)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _template_dir_prefix():
    """``snapdriver-template-<host>-``.

    Never a work directory's name: no domain uuid follows ``snapdriver-``.
    """
    return '%stemplate-%s-' % (qemu_img.NAME_PREFIX, host_label())


def prepare_targets(snapshots_directory):
    """At the service's start, the qemu-img creates of the first snapshot.

    :func:`qemu_img.prepare_empty_qcow2` in a directory of
    ``snapshots_directory`` named ``snapdriver-template-<host>-<random>``,
    removed after; this host's directories of that name that a killed
    start left are removed first. Never raises.
    """
    prefix = _template_dir_prefix()
    try:
        fileutils.ensure_tree(snapshots_directory)
        for entry in os.listdir(snapshots_directory):
            # NOTE: mkdtemp's random part holds no dash: the directory of
            # host "compute-1-a" is not host "compute-1"'s.
            if entry.startswith(prefix) and '-' not in entry[len(prefix):]:
                shutil.rmtree(os.path.join(snapshots_directory, entry),
                              ignore_errors=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=snapshots_directory)
    except OSError as e:
        LOG.debug('Could not prepare the first snapshot\'s files in '
                  '%(dir)s: %(err)s', {'dir': snapshots_directory, 'err': e})
        return
    try:
        qemu_img.prepare_empty_qcow2(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _still_active(request):
    try:
        return request.guest.is_active()
    except libvirt.libvirtError:
        return False


@contextlib.contextmanager
def captured(request, strategy, power, progress=None, image_id=None):
    """Take the snapshot; yield ``(out_path, run)`` until the caller is done.

    Everything that can fail without touching the guest is checked first
    (quiesce requirement, source disk, free space). The work directory,
    and so the image, is removed when the ``with`` block ends. The caller
    holds :func:`snapshot_lock` of the domain: the leftovers cleaned here
    are then surely no running snapshot's.

    :raises: ``nova.exception.InstanceNotFound`` when the domain vanishes
        mid-way; :class:`exception.GuestStoppedDuringSnapshot` when it
        stops; the typed errors of :mod:`snapdriver.exception`.
    """
    run = SnapshotRun(request, strategy, progress)
    if strategy.guest_state == base.GUEST_LIVE:
        guest_state.check_quiesce(request)
    check_source(request, strategy)
    # NOTE: as the stock driver does, create the snapshots directory on a
    # new host before its free space is measured.
    fileutils.ensure_tree(request.snapshots_directory)
    # Jobs of an interrupted snapshot first, then the files they wrote;
    # both before the free space is measured, which those files would
    # otherwise take, failing every retry.
    for item in strategy.clean_leftovers(request):
        LOG.warning('Cleaned up %s', item, instance=request.instance)
    for path in clean_stale_workdirs(request.snapshots_directory,
                                     request.uuid):
        LOG.warning('Removed work directory %s left by an interrupted '
                    'snapshot', path, instance=request.instance)
    with run.phase('preflight'):
        needed = check_space(request, strategy)
    LOG.debug('Snapshot needs %d MiB in %s', needed // units.Mi,
              request.snapshots_directory, instance=request.instance)

    with workdir(request, strategy) as wd:
        out_path = os.path.join(wd, 'image.%s' % request.image_format)
        LOG.info('Beginning %(strategy)s snapshot of %(state)s guest',
                 {'strategy': strategy.name,
                  'state': request.power_state_name},
                 instance=request.instance)
        try:
            # NOTE: every data copy (block job, backup job, qemu-img
            # convert or rebase) runs within Nova's [compute]
            # max_concurrent_disk_ops, as the stock driver's conversions
            # do. Taken before a cold strategy stops the guest, so waiting
            # for it is never downtime. Looked up at each snapshot: the
            # compute manager replaces it at start.
            with compute_utils.disk_ops_semaphore:
                with guest_state.held(request, strategy.guest_state, power,
                                      run.guest):
                    with run.phase('capture'):
                        LOG.debug('Capture by %s begins', strategy.name,
                                  instance=request.instance)
                        strategy.capture(request, out_path, run)
        except libvirt.libvirtError as ex:
            if ex.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                LOG.info('Domain %(name)s disappeared during its snapshot: '
                         '%(ex)s', {'name': request.name, 'ex': ex},
                         instance=request.instance)
                raise nova_exception.InstanceNotFound(
                    instance_id=request.label)
            # NOTE: a guest that shuts down, or is destroyed from outside,
            # during a snapshot stays defined; libvirt then answers with
            # VIR_ERR_OPERATION_INVALID ("domain is not running"). Not
            # InstanceNotRunning: Nova's compute manager takes that for a
            # deleted instance, records no fault and leaves the task state
            # set, so the server would stay stuck in image_pending_upload.
            # A typed error of ours is reverted and recorded like any
            # failure; InstanceNotFound stays for a domain really gone.
            # A live strategy's call in flight when the guest stops fails
            # otherwise, e.g. VIR_ERR_SYSTEM_ERROR "Unable to read from
            # monitor: Connection reset by peer": then any libvirt error of
            # a guest that ran and no longer does is that stop. (A cold
            # strategy stops the guest itself; held() has restored it by
            # now, and a restore that failed must not be told as a stop.)
            stopped = (ex.get_error_code() ==
                       libvirt.VIR_ERR_OPERATION_INVALID or (
                           strategy.guest_state == base.GUEST_LIVE and
                           request.is_active))
            if stopped and not _still_active(request):
                LOG.info('Domain %(name)s stopped during its snapshot: '
                         '%(ex)s', {'name': request.name, 'ex': ex},
                         instance=request.instance)
                raise exception.GuestStoppedDuringSnapshot(
                    instance=request.label, strategy=strategy.name,
                    reason=ex)
            raise
        with run.phase('check-output'):
            check_output(out_path, request.image_format, image_id)
        run.output_bytes = os.path.getsize(out_path)
        run.finished = time.monotonic()
        LOG.info('Snapshot extracted by %(strategy)s in %(total).2f s '
                 '(guest downtime %(down).3f s)',
                 {'strategy': strategy.name, 'total': run.total,
                  'down': run.guest.downtime}, instance=request.instance)
        yield out_path, run
