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

"""Count the data a disk holds, in-process, the way ``qemu-img measure`` does.

``qemu-img measure -O qcow2`` of a disk reports the clusters of the output
that hold data: the clusters the qcow2 overlay allocates (not those it
marks as zeroes), and where the overlay allocates nothing, the clusters of
its raw backing file that hold data (``SEEK_DATA``). A snapshot needs that
number before its job starts (the space check and the blocks reserved for
a backup target), and the ``qemu-img`` process costs 20-40 ms of the
snapshot's fixed cost, most of it the process start. This module reads the
same metadata itself: the overlay's header, its L1 table and the L2 tables
it points to (64 KiB per 512 MiB of disk), and the backing file's extents.

Only the disks Nova makes are read: a raw file, or a qcow2 file with
64 KiB clusters, no encryption, no external data file, no extended L2
entries and no compressed clusters, over at most one raw backing file.
Anything else (or anything unexpected in the file) returns ``None``, and
the caller runs ``qemu-img measure``.

A running guest's overlay is read with the metadata QEMU last wrote, like
``qemu-img measure --force-share`` reads it: clusters allocated since then
are missing from both counts, which is why a reservation adds slack
(:func:`snapdriver.space.reservation_for`).
"""

import array
import errno
import os
import struct
import sys

from oslo_log import log as logging
from oslo_utils import units

LOG = logging.getLogger(__name__)

#: The only cluster size read here: Nova's overlays and qemu-img's default.
CLUSTER = 64 * units.Ki
#: Entries of one L2 table, and the guest bytes one table maps.
L2_ENTRIES = CLUSTER // 8
L2_SPAN = CLUSTER * L2_ENTRIES

QCOW2_MAGIC = b'QFI\xfb'
#: magic, version, backing_file_offset, backing_file_size, cluster_bits,
#: size, crypt_method, l1_size, l1_table_offset (big-endian).
_HEADER = struct.Struct('>4sIQIIQIIQ')
_INCOMPATIBLE = struct.Struct('>Q')
_INCOMPATIBLE_OFFSET = 72
#: Incompatible features that do not change how L2 entries read: the dirty
#: bit (lazy refcounts) and the compression type (zstd).
_HARMLESS_INCOMPATIBLE = (1 << 0) | (1 << 3)
#: Bits 9-55 of an L1 or standard L2 entry: the host offset.
OFFSET_MASK = 0x00fffffffffffe00
#: Bit 0 of a standard L2 entry (version 3): the cluster reads as zeroes.
_ODD = bytes(i & 1 for i in range(256))
#: Bit 62 of an L2 entry, in its first (big-endian) byte: compressed.
_COMPRESSED = bytes((i >> 6) & 1 for i in range(256))


class Unreadable(Exception):
    """The file is not one this module reads; qemu-img must measure it."""


def data_extents(fd, limit):
    """Yield the ``(start, stop)`` byte ranges of ``fd`` that hold data.

    The file's data extents (``SEEK_DATA``/``SEEK_HOLE``) below ``limit``;
    a filesystem without hole detection reports the whole file as data.
    """
    offset = 0
    while offset < limit:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        if start >= limit:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), limit)
        yield start, stop
        offset = stop


def _data_ranges(path, clusters):
    """Return the sorted, merged cluster ranges of ``path`` holding data.

    ``[start, stop)`` in 64 KiB clusters, a cluster counting when any byte
    of it is in a data extent of the file; only the first ``clusters``
    clusters are looked at.
    """
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        limit = min(os.fstat(fd).st_size, clusters * CLUSTER)
        for start, stop in data_extents(fd, limit):
            first, last = start // CLUSTER, -(-stop // CLUSTER)
            if ranges and first <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], last)
            else:
                ranges.append([first, last])
    finally:
        os.close(fd)
    return ranges


def _clipped(ranges, lo, hi):
    """Yield the parts of ``ranges`` within clusters ``[lo, hi)``."""
    for start, stop in ranges:
        if stop <= lo:
            continue
        if start >= hi:
            break
        yield max(start, lo), min(stop, hi)


def _read(fd, size, offset):
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise Unreadable('short read of %d bytes at %d' % (size, offset))
    return data


def _entries(data):
    table = array.array('Q', data)
    if sys.byteorder == 'little':
        table.byteswap()
    return table


def _check_backing(fd, path, bf_offset, bf_size, backing_file):
    """Raise Unreadable unless the header names ``backing_file``, or none.

    The caller's backing file comes from libvirt's view of the chain; a
    count over another file (or over none, where the header has one)
    would miss data, and the reservation would be too small.
    """
    if not bf_offset:
        if backing_file:
            raise Unreadable('no backing file in the header')
        return
    if not backing_file or not 0 < bf_size <= 1023:
        raise Unreadable('backing file %s, header says another' %
                         backing_file)
    name = os.fsdecode(_read(fd, bf_size, bf_offset))
    named = os.path.join(os.path.dirname(path), name)
    try:
        same = os.path.samefile(named, backing_file)
    except OSError:
        same = False
    if not same:
        raise Unreadable('the header names backing file %s, not %s' % (
            name, backing_file))


def _overlay_clusters(path, virtual_size, backing_file, backing_ranges):
    """Count the data clusters of a qcow2 overlay over raw backing data."""
    clusters = -(-virtual_size // CLUSTER)
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        header = os.pread(fd, _INCOMPATIBLE_OFFSET + _INCOMPATIBLE.size, 0)
        if len(header) < _HEADER.size:
            raise Unreadable('no qcow2 header')
        (magic, version, bf_offset, bf_size, cluster_bits, size,
         crypt_method, l1_size, l1_offset) = _HEADER.unpack_from(header)
        if magic != QCOW2_MAGIC or version not in (2, 3):
            raise Unreadable('not a qcow2 version 2 or 3 header')
        if cluster_bits != 16 or crypt_method:
            raise Unreadable('cluster bits %d, encryption %d' % (
                cluster_bits, crypt_method))
        if size != virtual_size:
            raise Unreadable('virtual size %d, not %d' % (size,
                                                          virtual_size))
        _check_backing(fd, path, bf_offset, bf_size, backing_file)
        if version == 3:
            if len(header) < _INCOMPATIBLE_OFFSET + _INCOMPATIBLE.size:
                raise Unreadable('short qcow2 version 3 header')
            (incompatible,) = _INCOMPATIBLE.unpack_from(
                header, _INCOMPATIBLE_OFFSET)
            if incompatible & ~_HARMLESS_INCOMPATIBLE:
                raise Unreadable('incompatible features %#x' % incompatible)
        tables = -(-clusters // L2_ENTRIES)
        if l1_size < tables or l1_offset % CLUSTER:
            raise Unreadable('L1 table of %d entries at %d' % (
                l1_size, l1_offset))
        l1 = _entries(_read(fd, tables * 8, l1_offset))
        total = 0
        for index in range(tables):
            lo = index * L2_ENTRIES
            hi = min(clusters, lo + L2_ENTRIES)
            l2_offset = l1[index] & OFFSET_MASK
            if not l2_offset:
                # Nothing allocated in this 512 MiB: the backing file's data.
                total += sum(stop - start for start, stop in
                             _clipped(backing_ranges, lo, hi))
                continue
            if l2_offset % CLUSTER or l2_offset + CLUSTER > file_size:
                raise Unreadable('L2 table at %d' % l2_offset)
            data = _read(fd, (hi - lo) * 8, l2_offset)
            if data[0::8].translate(_COMPRESSED).count(1):
                raise Unreadable('compressed clusters')
            l2 = _entries(data)
            unallocated = l2.count(0)
            # NOTE: an entry with bit 0 set reads as zeroes: no data, and
            # (allocated) it hides the backing file's data at its place.
            zeroes = data[7::8].translate(_ODD).count(1)
            total += (hi - lo) - unallocated - zeroes
            for start, stop in _clipped(backing_ranges, lo, hi):
                total += l2[start - lo:stop - lo].count(0)
        return total
    finally:
        os.close(fd)


def data_bytes(path, fmt, virtual_size, backing_file=None,
               backing_format=None):
    """Return the bytes of 64 KiB clusters of the disk that hold data.

    What ``qemu-img measure -O qcow2`` counts as data for the disk
    ``path`` (format ``fmt``) over ``backing_file``, read in-process;
    ``None`` when the disk is not one this module reads (the caller then
    runs ``qemu-img measure``).

    :param path: the disk file.
    :param fmt: its format, as the domain declares it (never probed).
    :param virtual_size: its virtual size in bytes.
    :param backing_file: the backing file of a qcow2 disk, or None; it
        must be the file the disk's header names (or None where the
        header names none), else qemu-img measures the chain.
    :param backing_format: the backing file's format; only 'raw' is read.
    """
    if not virtual_size or fmt not in ('raw', 'qcow2'):
        return None
    clusters = -(-virtual_size // CLUSTER)
    try:
        if fmt == 'raw':
            return CLUSTER * sum(stop - start for start, stop in
                                 _data_ranges(path, clusters))
        backing = []
        if backing_file:
            if backing_format != 'raw':
                return None
            backing = _data_ranges(backing_file, clusters)
        return CLUSTER * _overlay_clusters(path, virtual_size,
                                           backing_file, backing)
    except (OSError, struct.error, Unreadable) as e:
        LOG.debug('%(path)s measured by qemu-img: %(reason)s',
                  {'path': path, 'reason': e})
        return None
