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

"""Fixtures that run against the real host: qemu-img and ``qemu:///system``.

Unlike Nova's ``LibvirtFixture`` nothing here is faked. The fixtures make
tiny disk images with known content, define real libvirt domains on them and
always clean up after themselves, so functional tests can check what a
snapshot strategy really does to a guest and its disks.

The host is prepared by ``tools/setup-host.sh``; a test calls
:func:`libvirt_unavailable_reason` and skips only when it returns a reason.

Every external command is run from an argument list (never through a shell)
and every image is opened with an explicit format, so no image is ever
probed.
"""

import collections
import hashlib
import json
import os
import random
import shutil
import tempfile
from xml.sax import saxutils

import fixtures
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import units
from oslo_utils import uuidutils

try:
    import libvirt
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None

LOG = logging.getLogger(__name__)

LIBVIRT_URI = 'qemu:///system'

#: Where the images go when the caller can write there: libvirt's own
#: image pool, already traversable (0o711) by the QEMU user.
DEFAULT_IMAGES_PARENT = '/var/lib/libvirt/images'

#: Start states understood by :class:`RealDomain`.
START_STATES = ('running', 'paused', 'shutoff')

# qemu-img / qemu-io are quick on the tiny images used here; the timeout
# only stops a wedged process (e.g. stuck on an image lock) hanging a test.
_CMD_TIMEOUT = 120

# No network, no graphics; a serial console on a pty. With a blank first
# sector the BIOS finds nothing to boot and the guest idles there.
_DOMAIN_XML = """<domain type='%(type)s'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>%(memory)d</memory>
  <vcpu>1</vcpu>
  <os>
    <type>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'%(driver_modes)s/>
      <source file=%(disk)s/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""

#: Random bytes generated at a time, so large disks never sit in memory.
_CHUNK = 16 * units.Mi


class Extent(collections.namedtuple('Extent',
                                    ['layer', 'offset', 'length', 'seed'])):
    """One write of known data into one layer of a :class:`DiskImages`.

    The data is not kept: it is generated again from ``seed``, chunk by
    chunk, whenever it is needed, so a disk of several GiB can be built
    and checked without holding its data in memory.
    """

    def chunks(self, start=0, end=None):
        """Yield ``(offset in the extent, bytes)`` covering start:end."""
        end = self.length if end is None else min(end, self.length)
        rng = random.Random(self.seed)
        pos = 0
        while pos < end:
            size = min(_CHUNK, self.length - pos)
            data = rng.randbytes(size)
            if pos + size > start:
                lo = max(start - pos, 0)
                hi = min(end - pos, size)
                yield pos + lo, data[lo:hi]
            pos += size

    @property
    def data(self):
        return b''.join(chunk for _pos, chunk in self.chunks())


def nova_disk_paths(instances_dir, instance_uuid, image_id):
    """Paths of an instance's disk as Nova's file backends lay it out.

    :param instances_dir: Nova's ``[DEFAULT] instances_path``.
    :param instance_uuid: The instance.
    :param image_id: The image the instance booted; its cached copy in
        ``_base`` is named after the SHA-1 of the id, as Nova's
        ``nova.virt.libvirt.imagecache.get_cache_fname`` does.
    :returns: ``(base path, disk path)``: ``_base/<sha1>`` (raw) and
        ``<uuid>/disk`` (the qcow2 overlay backed by it).
    """
    name = hashlib.sha1(image_id.encode()).hexdigest()
    return (os.path.join(instances_dir, '_base', name),
            os.path.join(instances_dir, instance_uuid, 'disk'))


def _execute(*cmd, **kwargs):
    kwargs.setdefault('timeout', _CMD_TIMEOUT)
    return processutils.execute(*cmd, **kwargs)


def libvirt_unavailable_reason(uri=LIBVIRT_URI):
    """Tell why the real host cannot run the functional tests.

    :param uri: The libvirt connection URI the tests will use.
    :returns: A human readable reason, or ``None`` when libvirt-python is
        importable, ``uri`` answers with a QEMU emulator libvirt can use,
        and ``qemu-img`` and ``qemu-io`` are on the ``PATH``.
    """
    if libvirt is None:
        return 'libvirt-python is not installed'
    for tool in ('qemu-img', 'qemu-io'):
        if shutil.which(tool) is None:
            return '%s is not installed (Debian package qemu-utils)' % tool
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        return ('cannot connect to %s (run tools/setup-host.sh): %s'
                % (uri, e))
    try:
        # Connecting only proves libvirtd runs; without a QEMU system
        # emulator (qemu-system-x86) no domain could start.
        conn.getDomainCapabilities(None, None, None, 'qemu', 0)
    except libvirt.libvirtError as e:
        return 'libvirt at %s has no usable QEMU emulator: %s' % (uri, e)
    finally:
        conn.close()
    return None


def kvm_usable():
    """Tell whether this process can use KVM.

    :returns: ``True`` when ``/dev/kvm`` opens read-write.
    """
    try:
        fd = os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def virtual_size(path, fmt, force_share=False):
    """Return the virtual size of an image, read with its format given.

    :param path: Path of the image.
    :param fmt: Its format, never probed.
    :param force_share: Pass ``-U`` to read an image in use by QEMU.
    :returns: The virtual size in bytes.
    :raises: ``processutils.ProcessExecutionError`` when qemu-img fails.
    """
    cmd = ['qemu-img', 'info', '-f', _format(fmt), '--output=json']
    if force_share:
        cmd.append('-U')
    out, _err = _execute(*cmd, path)
    return json.loads(out)['virtual-size']


def _format(fmt):
    # An empty format would let qemu-img probe the image.
    if not fmt:
        raise ValueError('an image format is required, not %r' % (fmt,))
    return fmt


def images_equal(a, a_fmt, b, b_fmt, force_share=False):
    """Compare the guest-visible content and the virtual size of two images.

    Unallocated areas compare equal to zeroes, so a sparse qcow2 overlay
    compares equal to a flat raw copy of its content; but images of
    different virtual sizes are never equal, even when the longer one's
    tail reads as zeroes.

    :param a: Path of the first image.
    :param a_fmt: Format of ``a`` (``raw``, ``qcow2``...), never probed.
    :param b: Path of the second image.
    :param b_fmt: Format of ``b``, never probed.
    :param force_share: Pass ``-U`` so images in use by a running QEMU can
        be read (the result is then only as stable as the guest).
    :returns: ``True`` when identical, ``False`` when they differ.
    :raises: ``ValueError`` when a format is empty;
        ``processutils.ProcessExecutionError`` when qemu-img fails
        (exit code other than 0 or 1).
    """
    # NOTE: qemu-img compare alone only warns about a size mismatch and
    # exits 0 when the extra tail is zeroes (a 3 MiB and a 4 MiB raw file
    # are "identical"). Its strict mode (-s) does fail on the size, but
    # also on any difference in allocation status at the same offset: with
    # QEMU 7.2 a raw file and its own qcow2 or raw conversion differ with
    # "Strict mode: Offset 0 block status mismatch!", so no image could
    # ever equal its reference. The sizes are compared here instead.
    sizes = (virtual_size(a, a_fmt, force_share),
             virtual_size(b, b_fmt, force_share))
    if sizes[0] != sizes[1]:
        LOG.info('%s (%d bytes) and %s (%d bytes) differ in virtual size',
                 a, sizes[0], b, sizes[1])
        return False
    cmd = ['qemu-img', 'compare', '-q', '-f', _format(a_fmt),
           '-F', _format(b_fmt)]
    if force_share:
        cmd.append('-U')
    # Exit code 0: identical, 1: different, 2 and more: error.
    try:
        _execute(*cmd, a, b)
    except processutils.ProcessExecutionError as e:
        if e.exit_code == 1:
            return False
        raise
    return True


def internal_snapshots(path, force_share=False):
    """List the internal snapshots of a qcow2 image.

    :param path: Path of a qcow2 image.
    :param force_share: Pass ``-U`` to read an image in use by QEMU.
    :returns: A list of dicts as qemu-img reports them (keys ``id``,
        ``name``, ``vm-state-size``, ``date-sec``...), empty when there is
        none.
    :raises: ``processutils.ProcessExecutionError`` when qemu-img fails.
    """
    # NOTE: 'qemu-img snapshot -l' has no -f option in QEMU 7.2 (only
    # --image-opts) and prints a table meant for humans; 'qemu-img info'
    # takes an explicit format and reports the same list as JSON. It opens
    # the image without its backing chain.
    cmd = ['qemu-img', 'info', '-f', 'qcow2', '--output=json']
    if force_share:
        cmd.append('-U')
    out, _err = _execute(*cmd, path)
    return json.loads(out).get('snapshots', [])


def qemu_img_check(path, fmt, force_share=False):
    """Check an image's metadata for corruption and leaks.

    :param path: Path of the image.
    :param fmt: Its format; ``raw`` has nothing to check and qemu-img
        refuses it.
    :param force_share: Pass ``-U`` to read an image in use by QEMU (the
        metadata may then be inconsistent mid-write).
    :returns: The JSON report as a dict, plus ``exit-code``: a clean image
        has exit code 0, ``check-errors == 0`` and no (or zero)
        ``corruptions`` and ``leaks`` keys (see :func:`check_problems`).
    :raises: ``processutils.ProcessExecutionError`` when qemu-img cannot
        check the image (exit code 1: the check did not complete; 63: the
        format has no check).
    """
    cmd = ['qemu-img', 'check', '-f', _format(fmt), '--output=json']
    if force_share:
        cmd.append('-U')
    # 0: clean, 2: corruptions, 3: leaks; the JSON report describes them.
    try:
        out, _err = _execute(*cmd, path)
        exit_code = 0
    except processutils.ProcessExecutionError as e:
        if e.exit_code not in (2, 3):
            raise
        out, exit_code = e.stdout, e.exit_code
    report = json.loads(out)
    report['exit-code'] = exit_code
    return report


def check_problems(report):
    """List what makes a :func:`qemu_img_check` report unclean.

    :param report: A report of :func:`qemu_img_check`.
    :returns: A list of phrases (``'2 leaked clusters'``...), empty when
        the image is clean: exit code 0, no check error, no corruption, no
        leak.
    """
    problems = []
    if report.get('exit-code', 0):
        problems.append('qemu-img check exited %d' % report['exit-code'])
    for key, what in (('check-errors', 'check errors'),
                      ('corruptions', 'corruptions'),
                      ('leaks', 'leaked clusters')):
        if report.get(key, 0):
            problems.append('%d %s' % (report[key], what))
    return problems


class DiskImages(fixtures.Fixture):
    """A raw base image and a qcow2 overlay on it, both with known data.

    The layout, with ``quarter = virtual_size / 4`` and ``extent =
    data_size / 8``: in each quarter ``k`` the base gets ``extent`` random
    bytes at ``k * quarter + quarter / 4``; the overlay gets ``extent``
    random bytes that overwrite the second half of that base extent (even
    ``k``) or land where the base holds nothing (odd ``k``). The first
    ``quarter / 4`` bytes stay zero, so the BIOS of a guest booting from
    the disk never finds a boot signature and never runs random code.

    The data is generated and written in chunks, never held whole in
    memory, so disks of several GiB can be built.

    :ivar workdir: The private directory holding everything.
    :ivar base_path: The raw base image.
    :ivar overlay_path: The qcow2 overlay (backing format raw).
    :ivar reference_path: A flat raw copy of the overlay's content, to
        compare snapshots against with :func:`images_equal`.
    :ivar virtual_size: Size of every image in bytes.
    :ivar extents: The :class:`Extent` written, in order.
    :ivar instances_dir: With ``nova_layout``, the instances directory
        (``workdir/instances``), else ``None``.
    :ivar instance_uuid: With ``nova_layout``, the instance the disk
        belongs to, else ``None``.
    """

    #: The largest ``data_size / virtual_size`` the layout can hold: the
    #: overlay extent of an odd quarter then ends at the quarter's end.
    MAX_FILL = 0.75

    def __init__(self, virtual_size=64 * units.Mi, data_size=4 * units.Mi,
                 parent_dir=None, seed=None, nova_layout=False,
                 instance_uuid=None, image_id=None):
        """Describe the images to make.

        :param virtual_size: Disk size in bytes, a multiple of 1 MiB.
        :param data_size: Random bytes to write in all, half in the base and
            half in the overlay; at least 32 KiB and at most
            :data:`MAX_FILL` of ``virtual_size``.
        :param parent_dir: Where to create the private work directory; by
            default :data:`DEFAULT_IMAGES_PARENT` when writable, else the
            system temporary directory. The QEMU user must be able to
            traverse it.
        :param seed: Seed of the random data, for reproducible content.
        :param nova_layout: Lay the images out as Nova's file backends do
            (:func:`nova_disk_paths`): ``workdir/instances/_base/<sha1>``
            and ``workdir/instances/<uuid>/disk``, instead of
            ``base.raw`` and ``overlay.qcow2`` in the work directory.
        :param instance_uuid: With ``nova_layout``, the instance's UUID;
            random by default.
        :param image_id: With ``nova_layout``, the id of the image the
            base caches; random by default.
        """
        super().__init__()
        if virtual_size <= 0 or virtual_size % units.Mi:
            raise ValueError('virtual_size must be a positive multiple of '
                             '1 MiB, not %r' % virtual_size)
        if not 32 * units.Ki <= data_size <= virtual_size * self.MAX_FILL:
            raise ValueError('data_size must be between 32 KiB and %g of '
                             'virtual_size, not %r' % (self.MAX_FILL,
                                                       data_size))
        self.virtual_size = virtual_size
        self.data_size = data_size
        self.parent_dir = parent_dir
        self.seed = seed
        self.nova_layout = nova_layout
        self.instance_uuid = (
            (instance_uuid or uuidutils.generate_uuid()).lower()
            if nova_layout else None)
        self.image_id = ((image_id or uuidutils.generate_uuid())
                         if nova_layout else None)
        self.instances_dir = None

    def _setUp(self):
        parent = self.parent_dir
        if parent is None:
            if os.access(DEFAULT_IMAGES_PARENT, os.W_OK | os.X_OK):
                parent = DEFAULT_IMAGES_PARENT
            else:
                parent = tempfile.gettempdir()
        # mkdtemp makes the directory 0o700 and no other user can use it.
        self.workdir = tempfile.mkdtemp(prefix='snapdriver-func-',
                                        dir=parent)
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        # NOTE: QEMU does not run as root but as the user and group of
        # qemu.conf (libvirt-qemu:libvirt-qemu on Debian). With
        # dynamic_ownership=1 libvirt chowns the disk *files* to that user
        # when a domain starts (and the backing files, which it leaves
        # chowned after the domain stops), but it never touches the
        # directories above them: start fails with "Cannot access storage
        # file ... (as uid:64055, gid:64055): Permission denied" under a
        # 0o700 directory. Search permission for others is enough; nobody
        # else can list or write the directory, and its name is random.
        os.chmod(self.workdir, 0o711)

        if self.nova_layout:
            self.instances_dir = os.path.join(self.workdir, 'instances')
            self.base_path, self.overlay_path = nova_disk_paths(
                self.instances_dir, self.instance_uuid, self.image_id)
            for path in (self.base_path, self.overlay_path):
                os.makedirs(os.path.dirname(path), mode=0o711,
                            exist_ok=True)
        else:
            self.base_path = os.path.join(self.workdir, 'base.raw')
            self.overlay_path = os.path.join(self.workdir, 'overlay.qcow2')
        self.reference_path = os.path.join(self.workdir, 'reference.raw')
        self.extents = self._layout(random.Random(self.seed))

        # A sparse raw file is a valid raw image; writing the base with
        # Python spares one qemu-io run.
        with open(self.base_path, 'wb') as f:
            f.truncate(self.virtual_size)
            for extent in self.extents:
                if extent.layer == 'base':
                    for pos, data in extent.chunks():
                        os.pwrite(f.fileno(), data, extent.offset + pos)

        # NOTE: The backing format is always explicit (-F): QEMU 6.1
        # refuses to create an overlay whose backing format would be probed.
        _execute('qemu-img', 'create', '-q', '-f', 'qcow2',
                 '-F', 'raw', '-b', self.base_path, self.overlay_path,
                 str(self.virtual_size))
        self._write_overlay()
        _execute('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                 self.overlay_path, self.reference_path,
                 timeout=max(_CMD_TIMEOUT, self.virtual_size // units.Gi *
                             _CMD_TIMEOUT))

    def _layout(self, rng):
        quarter = self.virtual_size // 4
        size = self.data_size // 8 // (4 * units.Ki) * (4 * units.Ki)
        extents = []
        for k in range(4):
            base_offset = k * quarter + quarter // 4
            extents.append(Extent('base', base_offset, size,
                                  rng.getrandbits(64)))
            if k % 2 == 0:
                # Overwrite the second half of the base extent, and more.
                offset = base_offset + size // 2
            else:
                offset = k * quarter + quarter * 5 // 8
            extents.append(Extent('overlay', offset, size,
                                  rng.getrandbits(64)))
        return extents

    def _write_overlay(self):
        # qemu-io runs write every extent, each chunk from its own file:
        # 'write -s FILE' fills the buffer from the start of FILE (and
        # holds it all in memory, hence the chunks). qemu-io splits a
        # command on blanks, so the files are named relative to the work
        # directory, whatever its path holds. One run per extent bounds
        # the space the chunk files take.
        for i, extent in enumerate(self.extents):
            if extent.layer != 'overlay':
                continue
            cmd = ['qemu-io', '-f', 'qcow2']
            sources = []
            try:
                for pos, data in extent.chunks():
                    source = 'extent-%d-%d.bin' % (i, pos)
                    with open(os.path.join(self.workdir, source), 'wb') as f:
                        f.write(data)
                    sources.append(source)
                    cmd += ['-c', 'write -q -s %s %d %d'
                            % (source, extent.offset + pos, len(data))]
                cmd.append(self.overlay_path)
                _execute(*cmd, cwd=self.workdir,
                         timeout=max(_CMD_TIMEOUT,
                                     extent.length // units.Gi *
                                     _CMD_TIMEOUT))
            finally:
                for source in sources:
                    os.unlink(os.path.join(self.workdir, source))

    def expected_bytes(self, offset, length):
        """Compute what the overlay must read back in a byte range.

        :param offset: Start of the range.
        :param length: Its length.
        :returns: The bytes a guest reading the overlay sees there.
        """
        buf = bytearray(length)
        # Base extents come before the overlay extent of their quarter, so
        # replaying the list in order gives the overlay's view.
        for extent in self.extents:
            start = max(offset, extent.offset)
            end = min(offset + length, extent.offset + extent.length)
            if start >= end:
                continue
            for pos, data in extent.chunks(start - extent.offset,
                                           end - extent.offset):
                at = extent.offset + pos - offset
                buf[at:at + len(data)] = data
        return bytes(buf)


class RealDomain(fixtures.Fixture):
    """A persistent domain defined on the real libvirt, always removed.

    The domain has 1 vCPU, 128 MiB of RAM, no network and no graphics, a
    serial console on a pty, and one virtio disk ``vda``: the qcow2 overlay
    of a :class:`DiskImages`, with libvirt's default cache and I/O modes
    unless told otherwise. It boots nothing: the blank first sector keeps
    it in the BIOS, which is all snapshot code needs.

    :ivar conn: The ``virConnect`` (closed at cleanup).
    :ivar dom: The ``virDomain``.
    :ivar images: The :class:`DiskImages` behind the disk.
    :ivar disk_path: Path of the disk (the overlay).
    :ivar uuid: The domain's UUID string.
    :ivar name: The domain's name.
    """

    _STATES = {}
    if libvirt is not None:
        _STATES = {
            libvirt.VIR_DOMAIN_NOSTATE: 'nostate',
            libvirt.VIR_DOMAIN_RUNNING: 'running',
            libvirt.VIR_DOMAIN_BLOCKED: 'blocked',
            libvirt.VIR_DOMAIN_PAUSED: 'paused',
            libvirt.VIR_DOMAIN_SHUTDOWN: 'shutdown',
            libvirt.VIR_DOMAIN_SHUTOFF: 'shutoff',
            libvirt.VIR_DOMAIN_CRASHED: 'crashed',
            libvirt.VIR_DOMAIN_PMSUSPENDED: 'pmsuspended',
        }

    def __init__(self, images=None, uuid=None, name=None,
                 start_state='running', uri=LIBVIRT_URI, memory_mib=128,
                 disk_cache=None, disk_io=None):
        """Describe the domain.

        :param images: A :class:`DiskImages` already set up; by default the
            fixture makes its own, removed with the domain.
        :param uuid: The domain UUID; random by default. A domain with this
            UUID or name must not exist yet: it is never redefined.
        :param name: The domain name; ``snapdriver-func-<uuid>`` by default.
        :param start_state: ``running``, ``paused`` (started paused) or
            ``shutoff`` (defined only).
        :param uri: The libvirt connection URI.
        :param memory_mib: Guest RAM in MiB.
        :param disk_cache: The disk's ``<driver cache=...>`` (``none``,
            ``writeback``...); ``None`` leaves it to libvirt (QEMU's
            default, writeback).
        :param disk_io: The disk's ``<driver io=...>`` (``native``,
            ``threads``, ``io_uring``); ``None`` leaves it to libvirt.
        """
        super().__init__()
        if start_state not in START_STATES:
            raise ValueError('start_state must be one of %s, not %r'
                             % (', '.join(START_STATES), start_state))
        self._given_images = images
        self.images = images
        # libvirt reports UUIDs in lower case; compare like with like.
        self.uuid = (uuid or uuidutils.generate_uuid()).lower()
        self.name = name or 'snapdriver-func-%s' % self.uuid
        self.start_state = start_state
        self.uri = uri
        self.memory_mib = memory_mib
        self.disk_cache = disk_cache
        self.disk_io = disk_io
        self.conn = None
        self.dom = None

    @property
    def disk_path(self):
        return self.images.overlay_path

    def _setUp(self):
        self.images = self._given_images
        if self.images is None:
            # Set up first, so it is cleaned up after the domain is gone.
            self.images = self.useFixture(DiskImages())
        self.conn = libvirt.open(self.uri)
        self.addCleanup(self.conn.close)
        self._check_unused()
        # Registered before the domain exists: whatever fails from here on,
        # the domain is destroyed and undefined.
        self.addCleanup(self._remove_domain)
        self.dom = self.conn.defineXMLFlags(
            self._xml(), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        if self.start_state == 'running':
            self.dom.create()
        elif self.start_state == 'paused':
            self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def _check_unused(self):
        # defineXML would silently redefine an existing domain of the same
        # name and UUID, and the cleanup would then remove it. Listing
        # rather than looking up keeps libvirt from printing "Domain not
        # found" errors on stderr.
        for dom in self.conn.listAllDomains(0):
            if dom.UUIDString() == self.uuid or dom.name() == self.name:
                raise RuntimeError(
                    'domain %s (%s) already exists on %s; refusing to '
                    'redefine it' % (dom.name(), dom.UUIDString(), self.uri))

    def _xml(self):
        modes = ''.join(' %s=%s' % (name, saxutils.quoteattr(value))
                        for name, value in (('cache', self.disk_cache),
                                            ('io', self.disk_io))
                        if value)
        return _DOMAIN_XML % {
            'driver_modes': modes,
            'type': 'kvm' if kvm_usable() else 'qemu',
            'name': saxutils.escape(self.name),
            'uuid': self.uuid,
            'memory': self.memory_mib,
            'disk': saxutils.quoteattr(self.disk_path),
        }

    def _remove_domain(self):
        """Destroy, drop the managed save and undefine; tolerate failures.

        Each step is tried on its own, so a domain half set up (or already
        removed by the test) is cleaned as far as it exists.
        """
        doms = [d for d in self.conn.listAllDomains(0)
                if d.UUIDString() == self.uuid]
        if not doms:
            LOG.debug('Domain %s already gone', self.name)
            return
        dom = doms[0]
        steps = (
            ('destroy', lambda: dom.isActive() and dom.destroy()),
            ('managed save removal',
             lambda: dom.hasManagedSaveImage(0) and dom.managedSaveRemove(0)),
            ('undefine', lambda: dom.isPersistent() and dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)),
        )
        for what, step in steps:
            try:
                step()
            except libvirt.libvirtError as e:
                LOG.warning('Cleanup of domain %s: %s failed: %s',
                            self.name, what, e)
        # The QEMU log libvirt keeps per domain name (Debian's path).
        try:
            os.unlink('/var/log/libvirt/qemu/%s.log' % self.name)
        except OSError:
            pass

    def state(self):
        """Return the domain state as a word.

        :returns: ``running``, ``paused``, ``shutoff``, ``blocked``,
            ``shutdown``, ``crashed``, ``pmsuspended`` or ``nostate``.
        """
        state, _reason = self.dom.state()
        return self._STATES.get(state, 'unknown-%d' % state)

    def is_persistent(self):
        """Tell whether libvirt still has a persistent definition."""
        return bool(self.dom.isPersistent())

    def has_managed_save(self):
        """Tell whether the domain has a managed-save image."""
        return bool(self.dom.hasManagedSaveImage(0))
