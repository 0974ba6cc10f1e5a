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

"""A real Linux guest that writes a verifiable sequence to its first disk.

The guest (kernel + initramfs built from Debian packages by
tools/build-test-guest.sh, booted by libvirt with direct kernel boot) runs
snapdriver/tests/functional/guest/writer.c on ``vda``: block i holds
sequence number i + 1 and every write completes before the next starts, so
any point-in-time (crash-consistent) copy of the disk holds exactly the
blocks 1..N.  :func:`verify_prefix` checks that on an image and returns N.

The guest also runs qemu-ga, and mounts an ext4 filesystem on ``vdb`` for
guest-fsfreeze-freeze to act on; a second writer ("fswriter") appends to a
file there, so its progress stops while the filesystem is frozen.

Typical use::

    reason = writer_guest.guest_unavailable_reason()
    if reason:
        self.skipTest(reason)
    guest = self.useFixture(writer_guest.WriterGuest())
    guest.wait_for_seq(guest.latest_seq() + 10)
    ... snapshot guest.dom (its first disk is guest.disk_path) ...
    n = writer_guest.verify_prefix(image_path, 'qcow2')
"""

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid as uuid_lib
from xml.sax import saxutils
import zlib

import fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
BUILD_SCRIPT = os.path.join(REPO_ROOT, 'tools', 'build-test-guest.sh')
DEFAULT_CACHE = '/var/cache/snapdriver/test-guest'
LIBVIRT_URI = 'qemu:///system'

#: Layout of the writer's blocks; see guest/writer.c.
BLOCK_SIZE = 4096
MAGIC = b'SNAPWRT1'
_HEADER = struct.Struct('<8sQQI')

#: Names of the domains this module defines start with this.
DOMAIN_PREFIX = 'snapdriver-wg-'

_SEQ_RE = {}
_build_result = None


class WriterGuestError(Exception):
    pass


def cache_dir():
    return os.environ.get('SNAPDRIVER_GUEST_CACHE', DEFAULT_CACHE)


def _which(name):
    return shutil.which(name, path=os.environ.get('PATH', '') +
                        ':/usr/sbin:/sbin:/usr/bin:/bin')


def guest_unavailable_reason():
    """Why the writer guest cannot be built or booted here, or None.

    Only what the host truly lacks counts (not root, no libvirt, no QEMU,
    not x86_64, no way to build the guest); a failing build or boot is a
    bug and raises from :func:`build_guest` or :class:`WriterGuest`.
    """
    if os.uname().machine != 'x86_64':
        return 'the test guest is x86_64 only (host: %s)' % (
            os.uname().machine)
    if os.geteuid() != 0:
        return 'the writer guest needs root (qemu:///system, package ' \
               'installs, disk ownership)'
    try:
        import libvirt  # noqa: F401
        import libvirt_qemu  # noqa: F401
    except ImportError as e:
        return 'libvirt-python is not installed: %s' % e
    for tool in ('qemu-img', 'qemu-system-x86_64'):
        if not _which(tool):
            return '%s is not installed' % tool
    cache = cache_dir()
    built = all(os.path.isfile(os.path.join(cache, f))
                for f in ('vmlinuz', 'initrd.img'))
    if not built:
        for tool in ('apt-get', 'dpkg-deb', 'bash'):
            if not _which(tool):
                return ('the test guest is not built in %s and cannot be: '
                        'no %s (a Debian host is needed)' % (cache, tool))
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        return 'cannot connect to %s: %s' % (LIBVIRT_URI, e)
    conn.close()
    return None


def kvm_unusable_reason():
    """Why KVM cannot run the test guest here, or None.

    /dev/kvm is not enough: on hosts that are themselves VMs it may be
    served by kvm_pvm (a software "pagetable-based" nested hypervisor),
    under which a stock Debian kernel crawls through its decompressor for
    a minute and then hangs ("kvm-pvm: INTERNAL_ERROR in batch emul" in
    the host's dmesg), while TCG boots the same guest in ~2 s.  Only the
    hardware modules, kvm_intel and kvm_amd, count.
    """
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return '/dev/kvm is missing or not accessible'
    hw = [m for m in ('kvm_intel', 'kvm_amd')
          if os.path.isdir('/sys/module/' + m)]
    if not hw:
        others = [m for m in ('kvm_pvm',) if os.path.isdir('/sys/module/' + m)]
        return '/dev/kvm is not backed by kvm_intel/kvm_amd (%s)' % (
            ', '.join(others) or 'unknown module')
    return None


def pick_virt_type(conn=None):
    """'kvm' or 'qemu' (TCG) for the test guest.

    SNAPDRIVER_GUEST_VIRT_TYPE=kvm|qemu overrides; otherwise kvm when
    :func:`kvm_unusable_reason` finds nothing and libvirt offers it.
    """
    forced = os.environ.get('SNAPDRIVER_GUEST_VIRT_TYPE')
    if forced:
        if forced not in ('kvm', 'qemu'):
            raise ValueError('SNAPDRIVER_GUEST_VIRT_TYPE must be kvm or qemu')
        return forced
    if kvm_unusable_reason():
        return 'qemu'
    if conn is not None:
        import libvirt

        try:
            conn.getDomainCapabilities(None, 'x86_64', None, 'kvm')
        except libvirt.libvirtError:
            return 'qemu'
    return 'kvm'


def _traversable_by_others(path):
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def qemu_reachable_tmpdir():
    """A temp dir whose ancestors all let QEMU's user traverse them.

    The default temp dir may be private (e.g. oslotest's NestedTempfile
    makes a 0700 one): QEMU, running as libvirt-qemu, could not open the
    disks below it.  SNAPDRIVER_GUEST_TMPDIR overrides.
    """
    forced = os.environ.get('SNAPDRIVER_GUEST_TMPDIR')
    if forced:
        return forced
    for cand in (tempfile.gettempdir(), '/var/tmp', '/tmp'):
        if os.path.isdir(cand) and _traversable_by_others(cand):
            return cand
    raise WriterGuestError('no temp dir that QEMU can traverse; set '
                           'SNAPDRIVER_GUEST_TMPDIR')


def build_guest(force=False):
    """Build (or reuse) the test guest; return ``(kernel, initrd)`` paths.

    tools/build-test-guest.sh is cheap when its cache is up to date (it
    compares a stamp), so it runs once per process, and again with
    ``force``; it rebuilds only when its inputs changed.
    """
    global _build_result
    if _build_result is not None and not force:
        return _build_result
    proc = subprocess.run(['bash', BUILD_SCRIPT], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    if proc.returncode != 0:
        raise RuntimeError('%s failed (exit %d):\n%s' % (
            BUILD_SCRIPT, proc.returncode, proc.stdout[-4000:]))
    paths = dict(line.split('=', 1) for line in proc.stdout.splitlines()
                 if line.startswith(('kernel=', 'initrd=')))
    kernel, initrd = paths.get('kernel'), paths.get('initrd')
    if not (kernel and initrd and os.path.isfile(kernel) and
            os.path.isfile(initrd)):
        raise RuntimeError('%s did not report kernel/initrd:\n%s' % (
            BUILD_SCRIPT, proc.stdout[-4000:]))
    _build_result = (kernel, initrd)
    return _build_result


def _fill_random(path, size, chunk=4 * 1024 * 1024):
    with open(path, 'r+b') as f:
        for _ in range(size // chunk):
            f.write(os.urandom(chunk))


def _run(cmd, timeout=600):
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError('%s failed (exit %d): %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def expected_block(seq, run_id):
    """The bytes writer.c writes for ``seq`` in the run ``run_id``."""
    base = _mix64(seq ^ run_id)
    filler = struct.pack('<%dQ' % ((BLOCK_SIZE - 32) // 8),
                         *[(base + k) & 0xFFFFFFFFFFFFFFFF
                           for k in range(32, BLOCK_SIZE, 8)])
    head = struct.pack('<8sQQ', MAGIC, seq, run_id)
    crc = zlib.crc32(filler, zlib.crc32(head))
    return head + struct.pack('<II', crc, 0) + filler


def _mix64(z):
    m = 0xFFFFFFFFFFFFFFFF
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _describe_block(block):
    magic, seq, run_id, crc = _HEADER.unpack_from(block)
    return 'magic=%r seq=%d run=%016x crc=%08x' % (magic, seq, run_id, crc)


def _check_raw(path):
    """Scan a raw image; return ``(n, run_id)``. See verify_prefix."""
    zero = bytes(BLOCK_SIZE)
    n = 0
    run_id = None
    gap_at = None
    with open(path, 'rb') as f:
        index = 0
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                break
            if len(block) < BLOCK_SIZE:
                block = block + bytes(BLOCK_SIZE - len(block))
            if block == zero:
                if gap_at is None:
                    gap_at = index
                index += 1
                continue
            where = 'block %d (offset %d) of %s' % (index, index * BLOCK_SIZE,
                                                    path)
            magic, seq, rid, crc = _HEADER.unpack_from(block)
            if magic != MAGIC:
                raise AssertionError('%s is neither empty nor a writer block '
                                     '(first bytes %r)' % (where, block[:16]))
            actual = zlib.crc32(block[32:], zlib.crc32(block[:24]))
            if actual != crc or block[28:32] != bytes(4):
                raise AssertionError('%s has a bad checksum (%08x, header '
                                     '%s): torn or corrupt write' % (
                                         where, actual,
                                         _describe_block(block)))
            if seq != index + 1:
                raise AssertionError('%s holds seq %d, expected %d' % (
                    where, seq, index + 1))
            if run_id is None:
                run_id = rid
            elif rid != run_id:
                raise AssertionError(
                    '%s is from writer run %016x but block 0 from run %016x '
                    '(the writer restarted: the guest rebooted?)' % (
                        where, rid, run_id))
            if gap_at is not None:
                raise AssertionError(
                    'not a prefix: block %d (seq %d) is present but block %d '
                    '(seq %d) is missing in %s: a write that completed later '
                    'is in the image while an earlier one is not' % (
                        index, seq, gap_at, gap_at + 1, path))
            n = seq
            index += 1
    if n:
        # Spot-check the filler of the first and last blocks against
        # writer.c's formula (the CRC already covers every block).
        with open(path, 'rb') as f:
            for seq in sorted({1, n}):
                f.seek((seq - 1) * BLOCK_SIZE)
                if f.read(BLOCK_SIZE) != expected_block(seq, run_id):
                    raise AssertionError(
                        'block %d of %s does not match the writer formula'
                        % (seq - 1, path))
    return n, run_id


def scattered_block(seq, run_id, nblocks):
    """The block writer.c -x writes sequence number ``seq`` to."""
    return _mix64(seq ^ run_id) % nblocks


def _check_scattered(path):
    """Scan a raw image of a scattered writer; return ``(cutoff, run_id)``.

    See :func:`verify_point_in_time`.
    """
    zero = bytes(BLOCK_SIZE)
    found = {}
    run_id = None
    with open(path, 'rb') as f:
        index = 0
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                break
            if len(block) < BLOCK_SIZE:
                block = block + bytes(BLOCK_SIZE - len(block))
            if block != zero:
                where = 'block %d (offset %d) of %s' % (
                    index, index * BLOCK_SIZE, path)
                magic, seq, rid, crc = _HEADER.unpack_from(block)
                if magic != MAGIC:
                    raise AssertionError(
                        '%s is neither empty nor a writer block (first '
                        'bytes %r)' % (where, block[:16]))
                actual = zlib.crc32(block[32:], zlib.crc32(block[:24]))
                if actual != crc or block[28:32] != bytes(4):
                    raise AssertionError(
                        '%s has a bad checksum (%08x, header %s): torn or '
                        'corrupt write' % (where, actual,
                                           _describe_block(block)))
                if run_id is None:
                    run_id = rid
                elif rid != run_id:
                    raise AssertionError(
                        '%s is from writer run %016x, another block from '
                        'run %016x' % (where, rid, run_id))
                found[index] = seq
            index += 1
    nblocks = index
    if not found:
        return 0, None
    cutoff = max(found.values())
    expected = {}
    for seq in range(1, cutoff + 1):
        expected[scattered_block(seq, run_id, nblocks)] = seq
    for index in sorted(set(expected) | set(found)):
        want, have = expected.get(index), found.get(index)
        if want != have:
            raise AssertionError(
                'not one instant: after writes 1..%d (the newest in the '
                'image) block %d must hold %s, but holds %s in %s' % (
                    cutoff, index,
                    'seq %d' % want if want else 'nothing',
                    'seq %d' % have if have else 'nothing', path))
    return cutoff, run_id


def verify_point_in_time(image_path, image_fmt, force_share=False):
    """Check an image of a scattered writer (``scatter=True``) is an instant.

    With C the newest sequence number in the image, every block must hold
    exactly the last of the writes 1..C aimed at it (``writer -x`` aims
    write k at block mix(k, run id) mod N), and a block no such write aimed
    at must be empty. A copy that is not of one instant (an old block next
    to a newer one, a write after C, a torn block) raises AssertionError.
    The disk must start empty (no ``base_fill``).

    :returns: ``(C, run_id)``.
    """
    tmpdir = tempfile.mkdtemp(prefix='snapdriver-verify-')
    try:
        raw = image_path
        if image_fmt != 'raw' or force_share:
            raw = os.path.join(tmpdir, 'image.raw')
            cmd = ['qemu-img', 'convert']
            if force_share:
                cmd.append('-U')
            cmd += ['-f', image_fmt, '-O', 'raw', image_path, raw]
            _run(cmd)
        return _check_scattered(raw)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def scan_image(image_path, image_fmt, force_share=False):
    """Like :func:`verify_prefix` but return ``(n, run_id)``."""
    if image_fmt == 'raw' and not force_share:
        return _check_raw(image_path)
    tmpdir = tempfile.mkdtemp(prefix='snapdriver-verify-')
    try:
        raw = os.path.join(tmpdir, 'image.raw')
        cmd = ['qemu-img', 'convert']
        if force_share:
            cmd.append('-U')
        cmd += ['-f', image_fmt, '-O', 'raw', image_path, raw]
        _run(cmd)
        return _check_raw(raw)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def verify_prefix(image_path, image_fmt, force_share=False):
    """Return N such that the image holds exactly the writer blocks 1..N.

    ``image_fmt`` is the image's format ('qcow2', 'raw', ...), always given
    explicitly; non-raw images are converted to a temporary raw file with
    ``qemu-img convert -f FMT -O raw`` (``-U`` with ``force_share``, for an
    image that a running QEMU holds).  Raises AssertionError naming the
    block if a block is neither empty nor valid (bad magic or checksum),
    holds the wrong sequence number or another writer run's data, or is
    present after a missing one (not a point-in-time state).
    """
    return scan_image(image_path, image_fmt, force_share)[0]


def _seq_regex(label):
    if label not in _SEQ_RE:
        _SEQ_RE[label] = re.compile(
            rb'(?<![A-Za-z0-9_])' + re.escape(label.encode()) +
            rb' seq=(\d+)(?: full)?\r?\n')
    return _SEQ_RE[label]


class WriterGuest(fixtures.Fixture):
    """A running, persistent libvirt domain with the writer on ``vda``.

    After setUp:

    * ``conn``, ``dom`` (libvirt), ``name``, ``uuid`` (str), ``virt_type``
      ('kvm' or 'qemu')
    * ``workdir``: private directory with every file below
    * ``disk_path`` / ``disk_format``: the writer's disk, the domain's
      first disk ``vda`` (qcow2 overlay on ``base_path``, a raw base, by
      default; ``disk_format='raw'`` gives a plain raw disk)
    * ``fs_disk_path``: ``vdb``, qcow2, the freezable ext4 (None without
      ``fs_disk``)
    * ``console_log_path``: the serial console log
    * ``boot_seconds``: from start to the writer's first report

    ``scatter=True`` makes the writer rewrite blocks at scattered offsets
    forever (``writer -x``; ``verify_prefix`` does not apply then), and
    ``base_fill=True`` fills the raw base with random data first, so that
    those writes overwrite allocated data all over the disk.

    ``rate`` is the writer's blocks (4 KiB) per second; with the default
    64 MiB disk and 100/s it fills in ~160 s and then stops (it never
    wraps).  Cleanup destroys the domain, removes its managed save and
    snapshot/checkpoint metadata, undefines it and deletes the files.
    """

    def __init__(self, disk_mib=64, rate=100, disk_format='qcow2',
                 fs_disk=True, fs_rate=20, memory_mib=256, vcpus=1,
                 boot_timeout=None, virt_type=None, wait_agent=True,
                 extra_cmdline='', uri=LIBVIRT_URI, scatter=False,
                 base_fill=False):
        super().__init__()
        if disk_format not in ('qcow2', 'raw'):
            raise ValueError('disk_format must be qcow2 or raw')
        self.disk_mib = disk_mib
        self.rate = rate
        self.disk_format = disk_format
        self.fs_disk = fs_disk
        self.fs_rate = fs_rate
        self.memory_mib = memory_mib
        self.vcpus = vcpus
        self.boot_timeout = boot_timeout
        self.virt_type = virt_type
        self.wait_agent = wait_agent
        self.extra_cmdline = extra_cmdline
        self.uri = uri
        self.scatter = scatter
        self.base_fill = base_fill
        self.conn = self.dom = None

    # -- setup / cleanup ---------------------------------------------------

    def _setUp(self):
        import libvirt

        self.kernel, self.initrd = build_guest()
        self.conn = libvirt.open(self.uri)
        self.addCleanup(self.conn.close)
        if self.virt_type is None:
            self.virt_type = self._pick_virt_type()
        if self.boot_timeout is None:
            self.boot_timeout = 60 if self.virt_type == 'kvm' else 300

        self.workdir = tempfile.mkdtemp(prefix='snapdriver-wg-',
                                        dir=qemu_reachable_tmpdir())
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        # Private, but QEMU (user libvirt-qemu) must reach the files in it:
        # traverse only, no listing, never writable by others.
        os.chmod(self.workdir, 0o711)

        self.uuid = str(uuid_lib.uuid4())
        self.name = DOMAIN_PREFIX + self.uuid[:8]
        self.console_log_path = os.path.join(self.workdir, 'console.log')
        self.base_path = None
        if self.disk_format == 'qcow2':
            self.base_path = os.path.join(self.workdir, 'base.raw')
            self.disk_path = os.path.join(self.workdir, 'data.qcow2')
            _run(['qemu-img', 'create', '-q', '-f', 'raw', self.base_path,
                  '%dM' % self.disk_mib])
            if self.base_fill:
                _fill_random(self.base_path, self.disk_mib * 1024 * 1024)
            _run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                  '-b', self.base_path, self.disk_path])
        else:
            self.disk_path = os.path.join(self.workdir, 'data.raw')
            _run(['qemu-img', 'create', '-q', '-f', 'raw', self.disk_path,
                  '%dM' % self.disk_mib])
        self.fs_disk_path = None
        if self.fs_disk:
            self.fs_disk_path = os.path.join(self.workdir, 'fs.qcow2')
            _run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                  self.fs_disk_path, '32M'])

        for path in (self.base_path, self.disk_path, self.fs_disk_path):
            if path:
                os.chmod(path, 0o600)   # libvirt hands them to QEMU's user

        self.addCleanup(self._remove_domain)
        self.dom = self.conn.defineXML(self.domain_xml())
        t0 = time.monotonic()
        self.dom.create()
        self._wait_booted(t0)

    def _pick_virt_type(self):
        return pick_virt_type(self.conn)

    def _remove_domain(self):
        import libvirt

        try:
            dom = self.conn.lookupByUUIDString(self.uuid)
        except libvirt.libvirtError:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            if dom.hasManagedSaveImage():
                dom.managedSaveRemove()
        except libvirt.libvirtError:
            pass
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                 libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                 libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
                 libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError:
            # A transient domain (e.g. a test undefined it) is gone once
            # destroyed; anything else is worth knowing.
            try:
                self.conn.lookupByUUIDString(self.uuid)
            except libvirt.libvirtError:
                return
            raise

    def cmdline(self):
        args = ['console=ttyS0', 'loglevel=4', 'panic=-1',
                'snapguest.writer_dev=/dev/vda',
                'snapguest.rate=%d' % self.rate,
                'snapguest.fs_rate=%d' % self.fs_rate,
                'snapguest.fs_dev=%s' % ('/dev/vdb' if self.fs_disk
                                         else '')]
        if self.scatter:
            args.append('snapguest.scatter=1')
        if self.virt_type == 'qemu':
            args.append('mitigations=off')
        if self.extra_cmdline:
            args.append(self.extra_cmdline)
        return ' '.join(args)

    def domain_xml(self):
        e = saxutils.escape
        q = saxutils.quoteattr
        disks = [
            "<disk type='file' device='disk'>"
            "<driver name='qemu' type=%s/><source file=%s/>"
            "<target dev='vda' bus='virtio'/></disk>" % (
                q(self.disk_format), q(self.disk_path))]
        if self.fs_disk_path:
            disks.append(
                "<disk type='file' device='disk'>"
                "<driver name='qemu' type='qcow2'/><source file=%s/>"
                "<target dev='vdb' bus='virtio'/></disk>" % (
                    q(self.fs_disk_path)))
        values = {
            'type': q(self.virt_type), 'name': e(self.name),
            'uuid': self.uuid, 'mem': self.memory_mib, 'vcpus': self.vcpus,
            'kernel': e(self.kernel), 'initrd': e(self.initrd),
            'cmdline': e(self.cmdline()), 'disks': '\n    '.join(disks),
            'log': q(self.console_log_path)}
        return """<domain type=%(type)s>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>%(mem)d</memory>
  <vcpu>%(vcpus)d</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    %(disks)s
    <serial type='file'>
      <source path=%(log)s append='off'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
""" % values

    def _wait_booted(self, t0):
        deadline = t0 + self.boot_timeout
        while True:
            if self.latest_seq() > 0:
                break
            if not self.dom.isActive():
                raise WriterGuestError(
                    'domain %s stopped while booting; console:\n%s' % (
                        self.name, self.console_tail()))
            if time.monotonic() > deadline:
                raise WriterGuestError(
                    'writer not running after %ds (%s); console:\n%s' % (
                        self.boot_timeout, self.virt_type,
                        self.console_tail()))
            time.sleep(0.1)
        self.boot_seconds = time.monotonic() - t0
        if self.wait_agent:
            self.wait_for_agent(max(10, deadline - time.monotonic()))

    # -- console -----------------------------------------------------------

    def console_bytes(self):
        try:
            with open(self.console_log_path, 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return b''

    def console_text(self):
        return self.console_bytes().decode('utf-8', 'replace')

    def console_tail(self, lines=40):
        return '\n'.join(self.console_text().splitlines()[-lines:])

    def latest_seq(self, label='writer'):
        """Last sequence number the writer reported on the console.

        0 if none yet.  The disk holds at least this many blocks.
        """
        found = _seq_regex(label).findall(self.console_bytes())
        return int(found[-1]) if found else 0

    def wait_for_seq(self, min_seq, timeout=30, label='writer'):
        """Wait until the console reports seq >= min_seq; return it."""
        deadline = time.monotonic() + timeout
        while True:
            seq = self.latest_seq(label)
            if seq >= min_seq:
                return seq
            if time.monotonic() > deadline:
                raise WriterGuestError(
                    '%s seq %d < %d after %ss; console:\n%s' % (
                        label, seq, min_seq, timeout, self.console_tail()))
            time.sleep(0.1)

    # -- guest agent -------------------------------------------------------

    def agent_command(self, execute, arguments=None, timeout=10):
        """Run a qemu-ga command; return its decoded 'return' value."""
        import libvirt_qemu

        cmd = {'execute': execute}
        if arguments is not None:
            cmd['arguments'] = arguments
        out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(cmd),
                                            timeout, 0)
        return json.loads(out).get('return')

    def agent_ping(self, timeout=10):
        """guest-ping through libvirt; returns True (raises on failure)."""
        self.agent_command('guest-ping', timeout=timeout)
        return True

    def wait_for_agent(self, timeout=30):
        import libvirt

        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.agent_ping(timeout=2)
            except libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise WriterGuestError(
                        'guest agent not answering after %ss: %s; '
                        'console:\n%s' % (timeout, e, self.console_tail()))
            time.sleep(0.2)

    def fs_frozen_status(self):
        """'frozen' or 'thawed' (guest-fsfreeze-status)."""
        return self.agent_command('guest-fsfreeze-status')


@contextlib.contextmanager
def fs_freeze_spy():
    """Record the guest filesystem freezes and thaws, whoever asks for them.

    Both drivers freeze through ``virDomain.fsFreeze`` and thaw through
    ``virDomain.fsThaw`` (Nova's ``Guest.freeze_filesystems`` and
    ``thaw_filesystems``); the spies call the real methods and yield the
    list of ``(call, filesystems, monotonic time of the return)``.
    """
    # NOTE: imported here, like elsewhere in this module, so that
    # guest_unavailable_reason() can report a missing libvirt-python.
    import libvirt

    events = []
    freeze = libvirt.virDomain.fsFreeze
    thaw = libvirt.virDomain.fsThaw

    def spy_freeze(dom, *args, **kwargs):
        count = freeze(dom, *args, **kwargs)
        events.append(('freeze', count, time.monotonic()))
        return count

    def spy_thaw(dom, *args, **kwargs):
        count = thaw(dom, *args, **kwargs)
        events.append(('thaw', count, time.monotonic()))
        return count

    libvirt.virDomain.fsFreeze = spy_freeze
    libvirt.virDomain.fsThaw = spy_thaw
    try:
        yield events
    finally:
        libvirt.virDomain.fsFreeze = freeze
        libvirt.virDomain.fsThaw = thaw
