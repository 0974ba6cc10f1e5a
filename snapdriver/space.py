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

"""Reserve disk space for a file before QEMU writes it.

A push-mode backup job couples the guest's writes to its target: QEMU's
copy-before-write filter copies the old data of every block the guest
overwrites into the target *before* the guest's write proceeds, and (as
libvirt 9.0 starts the job, with no ``on-cbw-error`` choice) a failed copy
fails the guest's write. A full filesystem under the target then pauses
the guest with an I/O error (QEMU's default ``werror=enospc``), where a
mirror would only fail its own job.

So the blocks the target will need are allocated before the job starts,
past the end of the (still small) file: ``fallocate(2)`` with
``FALLOC_FL_KEEP_SIZE``, what ``fallocate --keep-size`` (the command Nova
runs for ``[DEFAULT] preallocate_images = space``) does. QEMU
appends the target's clusters into those blocks, so a filesystem that
fills up during the job cannot fail QEMU's writes, and a second snapshot
that no longer fits fails *before* its job starts.
"""

import ctypes
import ctypes.util
import errno
import os

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import units

from snapdriver import conf
from snapdriver import exception

LOG = logging.getLogger(__name__)
CONF = conf.CONF

#: Extra room on top of ``qemu-img measure``: the copy-before-write filter
#: copies whole 64 KiB clusters, and QEMU may allocate qcow2 metadata in
#: another order than a convert does.
SLACK_BYTES = 16 * units.Mi
SLACK_FRACTION = 0.02

#: One reservation at a time in this process, so that the free space each
#: one checks already counts the others (fallocate takes the blocks at
#: once). Another process reserving at the same instant can only make our
#: fallocate fail with ENOSPC, which fails the snapshot before its job.
LOCK_NAME = 'snapdriver-reserve-space'
_SUPPORT = {}


#: The cluster size of the qcow2 images qemu-img convert and create write.
QCOW2_CLUSTER = 64 * units.Ki


def _ceil_div(a, b):
    return -(-a // b)


def qcow2_size_bound(virtual_size, data_bytes):
    """Return an upper bound of the bytes a qcow2 image of this data takes.

    What ``qemu-img measure -O qcow2`` reports for an image of
    ``virtual_size`` holding at most ``data_bytes`` of data, computed
    without a process: the data clusters, the header, one L2 table per
    512 MiB of virtual size and the L1 table over them, the 16-bit
    refcount blocks and their table over all of these, and a few clusters
    to spare.
    """
    c = QCOW2_CLUSTER
    data = _ceil_div(min(data_bytes, _ceil_div(virtual_size, c) * c), c)
    l2 = _ceil_div(virtual_size, c * (c // 8))
    l1 = _ceil_div(l2 * 8, c)
    clusters = data + 1 + l1 + l2 + 8
    refcount_blocks = _ceil_div(clusters, c // 2) + 1
    refcount_table = _ceil_div(refcount_blocks * 8, c) + 1
    return c * (clusters + refcount_blocks + refcount_table)


def reservation_for(measured):
    """Return the bytes to reserve for a target ``qemu-img measure`` sized."""
    return measured + max(SLACK_BYTES, int(measured * SLACK_FRACTION))


_LIBC = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_LIBC.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64)
#: linux/falloc.h: allocate past the end without changing the file size.
FALLOC_FL_KEEP_SIZE = 0x01


def _fallocate_fd(fd, size):
    """fallocate(2) with FALLOC_FL_KEEP_SIZE; raises OSError.

    The call ``fallocate --keep-size`` (and Nova's preallocate_images)
    makes, without a process: the blocks are allocated past the end of the
    file and its size does not change, so QEMU (and an upload of the
    finished image) still sees only what was written.
    """
    if _LIBC.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _existing(path):
    while path and not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe(where):
    # NOTE: an unnamed file (O_TMPFILE): a process killed mid-probe leaves
    # nothing behind (the randomized kill test found a named probe left).
    try:
        fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        fd = None
    if fd is None:
        probe = os.path.join(where, '.snapdriver-fallocate-%d' % os.getpid())
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
        os.unlink(probe)
    try:
        _fallocate_fd(fd, 4096)
    finally:
        os.close(fd)


def unsupported_reason(directory):
    """Say why space cannot be reserved in ``directory``, or ``None``.

    Probed once per filesystem and process, with a 4 KiB reservation in an
    unnamed temporary file in ``directory`` (or its nearest existing parent
    when it does not exist yet).
    """
    where = _existing(directory)
    try:
        dev = os.stat(where).st_dev
    except OSError as e:
        return 'cannot read %s: %s' % (where, e)
    if dev not in _SUPPORT:
        try:
            _probe(where)
            _SUPPORT[dev] = None
        except OSError as e:
            _SUPPORT[dev] = ('the filesystem of %s cannot reserve space '
                             '(fallocate with FALLOC_FL_KEEP_SIZE: %s)' %
                             (where, e.strerror or e))
    return _SUPPORT[dev]


def reserve(path, size, instance=None):
    """Allocate ``size`` bytes of blocks for the existing file ``path``.

    Fails when the filesystem would keep less than ``[snapdriver]
    free_space_margin_mb`` free afterwards, or has no room at all.

    :raises: :class:`exception.InsufficientSnapshotSpace`
    """
    directory = os.path.dirname(path)
    margin = CONF.snapdriver.free_space_margin_mb * units.Mi
    # NOTE: lockutils, not threading.Lock: under eventlet (nova-compute's
    # default mode) a lock made at import time is a real OS lock, and a
    # greenthread waiting on it blocks the one holding it (seen in
    # test_load: concurrent snapshots deadlocked here).
    with lockutils.lock(LOCK_NAME):
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if size + margin > free:
            raise exception.InsufficientSnapshotSpace(
                path=directory, needed_mb=size // units.Mi,
                margin_mb=CONF.snapdriver.free_space_margin_mb,
                free_mb=free // units.Mi)
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                _fallocate_fd(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise exception.InsufficientSnapshotSpace(
                    path=directory, needed_mb=size // units.Mi,
                    margin_mb=CONF.snapdriver.free_space_margin_mb,
                    free_mb=free // units.Mi)
            raise exception.SnapdriverException(
                reason='cannot reserve %d MiB for %s: %s' % (
                    size // units.Mi, path, e))
    LOG.debug('Reserved %(mib)d MiB for %(path)s',
              {'mib': size // units.Mi, 'path': path}, instance=instance)
