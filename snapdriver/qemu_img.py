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

"""Every qemu-img command snapdriver runs, in one place.

Rules kept by every function here:

* the input format is always given (``-f``): qemu-img never probes a
  format, so a guest cannot make a raw disk be read as qcow2;
* commands are argument lists run through
  :func:`oslo_concurrency.processutils.execute`, never shell strings;
* commands that only parse image headers (``info``, ``measure``, ``check``)
  run under Nova's ``QEMU_IMG_LIMITS`` (address space and CPU time), so a
  crafted header cannot exhaust the host; the limits are set in the child
  before the exec rather than through processutils' Python wrapper;
* commands that copy data have a timeout (``[snapdriver] qemu_img_timeout``
  by default); on timeout the process is killed and :class:`QemuImgTimeout`
  is raised;
* failures are raised as :class:`snapdriver.exception.QemuImgFailed` with
  qemu-img's own message.
"""

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import struct
import urllib.parse

from nova.privsep import utils as nova_privsep_utils
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import imageutils
from oslo_utils import units

from snapdriver import conf
from snapdriver import exception

LOG = logging.getLogger(__name__)
CONF = conf.CONF


QEMU_IMG = 'qemu-img'

#: Limits for header-parsing commands, as Nova's ``QEMU_IMG_LIMITS``.
QEMU_IMG_LIMITS = processutils.ProcessLimits(
    cpu_time=30,
    address_space=1 * units.Gi)

#: Prefix of every internal snapshot and temporary file snapshotdriver
#: creates, so leftovers from a killed process can be found and removed.
NAME_PREFIX = 'snapdriver-'

#: Formats snapdriver reads from or writes to with qemu-img.
KNOWN_FORMATS = ('raw', 'qcow2')


def _command(args):
    """Return the argument list that runs ``qemu-img args`` in the C locale.

    NOTE: as Nova does (``env LC_ALL=C LANG=C qemu-img ...``), the locale is
    set through ``env`` rather than processutils' ``env_variables``, which
    replaces the whole environment: qemu-img would then be looked up in
    ``/bin:/usr/bin`` only, ignoring the service's PATH, and TMPDIR and
    proxy settings would be dropped.
    """
    return ['env', 'LC_ALL=C', 'LANG=C', QEMU_IMG] + [str(a) for a in args]


#: linux/prctl.h
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)


def die_with_parent():
    """In a child before exec: be SIGKILLed when the parent dies.

    NOTE: a qemu-img left running by a SIGKILLed nova-compute goes on
    reading and writing the disk while the restarted service cleans up and
    restores the guest: the randomized kill test found one still creating
    or deleting an internal snapshot, holding the disk's lock, after the
    recovery. The setting survives the exec of ``env``, the prlimit
    wrapper and qemu-img (none is set-user-ID).
    """
    parent = os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        # The parent died before the prctl: nobody will signal us.
        os._exit(1)


#: ProcessLimits attributes and their resource limits (as
#: oslo_concurrency.prlimit maps them).
_RLIMITS = {
    'address_space': resource.RLIMIT_AS,
    'core_file_size': resource.RLIMIT_CORE,
    'cpu_time': resource.RLIMIT_CPU,
    'data_size': resource.RLIMIT_DATA,
    'file_size': resource.RLIMIT_FSIZE,
    'memory_locked': resource.RLIMIT_MEMLOCK,
    'number_files': resource.RLIMIT_NOFILE,
    'number_processes': resource.RLIMIT_NPROC,
    'resident_set_size': resource.RLIMIT_RSS,
    'stack_size': resource.RLIMIT_STACK,
}


def _preexec(prlimit):
    """The child's set-up before exec: death signal, then resource limits.

    NOTE: processutils' own ``prlimit=`` runs the command through a Python
    wrapper (``python -m oslo_concurrency.prlimit``), which starts an
    interpreter for every call: ~100 ms, most of a snapshot's fixed cost
    (three header-parsing commands). The same limits are set here with
    setrlimit(2) in the forked child, before the exec, at no cost.
    """
    limits = []
    for name, which in _RLIMITS.items():
        value = getattr(prlimit, name, None) if prlimit else None
        if value is not None:
            limits.append((which, value))

    def preexec():
        die_with_parent()
        for which, value in limits:
            resource.setrlimit(which, (value, value))
    return preexec


def _run(action, path, args, timeout=None, prlimit=None, log_errors=True):
    """Run one qemu-img command.

    :param action: what the command does, for messages (``'convert'``).
    :param path: the image the command is about, for messages.
    :param args: the arguments after ``qemu-img``, as a list.
    :param timeout: seconds before the process is killed, or ``None``.
    :param prlimit: a :class:`processutils.ProcessLimits`, or ``None``.
    :returns: ``(stdout, stderr)``.

    qemu-img runs with the service's environment (found through its PATH),
    with ``LC_ALL`` and ``LANG`` set to ``C`` so its messages can be
    parsed.
    :raises: :class:`exception.QemuImgTimeout` on timeout,
        :class:`exception.QemuImgFailed` on a non-zero exit or a signal.
    """
    procs = []
    cmd = _command(args)
    try:
        return processutils.execute(
            *cmd, timeout=timeout, on_execute=procs.append,
            preexec_fn=_preexec(prlimit))
    except processutils.ProcessExecutionError as e:
        if e.exit_code is not None and e.exit_code < 0:
            reason = 'killed by signal %s' % signal.Signals(
                -e.exit_code).name
        else:
            reason = (e.stderr or e.stdout or '').strip() or (
                'exit code %s' % e.exit_code)
        if log_errors:
            LOG.error('qemu-img %(action)s of %(path)s failed: %(reason)s',
                      {'action': action, 'path': path, 'reason': reason})
        raise exception.QemuImgFailed(action=action, path=path,
                                      reason=reason)
    except OSError as e:
        raise exception.QemuImgFailed(action=action, path=path,
                                      reason=str(e))
    except Exception as e:
        # NOTE: matched by name: under eventlet (nova-compute's default
        # concurrency mode) the Popen processutils uses comes from another
        # copy of the subprocess module, whose TimeoutExpired is not
        # subprocess.TimeoutExpired.
        if type(e).__name__ != 'TimeoutExpired':
            raise
        # processutils leaves the child running when communicate() times
        # out; kill it so it stops touching the disk.
        for proc in procs:
            proc.kill()
            proc.communicate()
        LOG.error('qemu-img %(action)s of %(path)s killed after %(t)s s',
                  {'action': action, 'path': path, 't': timeout})
        raise exception.QemuImgTimeout(action=action, path=path,
                                       timeout=timeout)


def _check_format(fmt):
    if not fmt:
        raise ValueError('an explicit image format is required')
    return fmt


def info(path, fmt, backing_chain=False, force_share=False):
    """Return ``qemu-img info`` of an image.

    :param path: the image file.
    :param fmt: the image's format, as declared (never probed).
    :param backing_chain: also describe the whole backing chain.
    :param force_share: read the header of an image a running QEMU holds
        locked (``-U``); only safe for reading metadata.
    :returns: an :class:`oslo_utils.imageutils.QemuImgInfo`, or a list of
        them (top first) when ``backing_chain`` is true.
    :raises: :class:`exception.QemuImgFailed`
    """
    args = ['info', '-f', _check_format(fmt), '--output=json']
    if backing_chain:
        args.append('--backing-chain')
    if force_share:
        args.append('--force-share')
    args += ['--', path]
    out, _err = _run('info', path, args, prlimit=QEMU_IMG_LIMITS)
    if backing_chain:
        return [imageutils.QemuImgInfo(json.dumps(layer), format='json')
                for layer in json.loads(out)]
    return imageutils.QemuImgInfo(out, format='json')


def create(path, fmt, size, backing_file=None, backing_fmt=None):
    """Create an image, optionally as an overlay on a backing file.

    :param path: the file to create.
    :param fmt: format of the new image.
    :param size: virtual size in bytes.
    :param backing_file: backing file of the new image, or ``None``.
    :param backing_fmt: format of ``backing_file``; required with it
        (QEMU 6.1 and later refuse to probe it).
    :raises: :class:`exception.QemuImgFailed`
    """
    args = ['create', '-f', _check_format(fmt)]
    if backing_file:
        args += ['-b', backing_file, '-F', _check_format(backing_fmt)]
    args += ['--', path, int(size)]
    _run('create', path, args)


#: The files ``qemu-img create -f qcow2`` made in this process, by virtual
#: size (see :func:`create_empty_qcow2`); at most this many sizes, each a
#: few hundred KiB.
_EMPTY_QCOW2 = {}
EMPTY_QCOW2_SIZES = 32
#: Larger new files (metadata of very large disks) are not kept.
EMPTY_QCOW2_MAX_BYTES = 4 * units.Mi

#: The first file ``qemu-img create -f qcow2`` made in this process, from
#: which the files of other sizes are derived once a second ``qemu-img
#: create`` has confirmed the derivation (:func:`confirm_empty_qcow2`):
#: ``prefix`` (the bytes before the L1 table), ``size``, ``confirmed``
#: (None until checked, then True or False).
_TEMPLATE = {'prefix': None, 'size': None, 'confirmed': None}
#: A new qcow2 file: 64 KiB clusters, an L1 entry per 512 MiB; the L1
#: table is the end of the file.
_QCOW2_CLUSTER = 64 * units.Ki
_QCOW2_L2_SPAN = _QCOW2_CLUSTER * (_QCOW2_CLUSTER // 8)
_QCOW2_SIZE = struct.Struct('>Q')
_QCOW2_SIZE_OFFSET = 24
_QCOW2_L1 = struct.Struct('>IQ')
_QCOW2_L1_OFFSET = 36


def _template_of(data):
    """Return the bytes before the L1 table of a new qcow2 file, or None.

    None unless the file is what ``qemu-img create -f qcow2`` writes for
    disks up to 4 TiB: 64 KiB clusters, and an all-zero L1 table of one
    entry per 512 MiB that fits in one cluster and ends the file.
    """
    if len(data) < _QCOW2_L1_OFFSET + _QCOW2_L1.size or data[:4] != (
            b'QFI\xfb'):
        return None
    if struct.unpack_from('>I', data, 20)[0] != 16:
        return None
    size = _QCOW2_SIZE.unpack_from(data, _QCOW2_SIZE_OFFSET)[0]
    l1_size, l1_offset = _QCOW2_L1.unpack_from(data, _QCOW2_L1_OFFSET)
    if (l1_size != -(-size // _QCOW2_L2_SPAN) or l1_offset % _QCOW2_CLUSTER
            or l1_size * 8 > _QCOW2_CLUSTER or
            len(data) != l1_offset + l1_size * 8 or
            data[l1_offset:].count(0) != l1_size * 8):
        return None
    return data[:l1_offset]


def _derived_empty_qcow2(size, prefix):
    """The file of ``size`` bytes derived from ``prefix``, or None."""
    l1_size = -(-size // _QCOW2_L2_SPAN)
    # NOTE: qemu-img rounds a size up to whole 512-byte sectors; such
    # sizes are left to it.
    if (not prefix or not l1_size or l1_size * 8 > _QCOW2_CLUSTER or
            size % 512):
        return None
    header = bytearray(prefix)
    _QCOW2_SIZE.pack_into(header, _QCOW2_SIZE_OFFSET, size)
    _QCOW2_L1.pack_into(header, _QCOW2_L1_OFFSET, l1_size, len(prefix))
    return bytes(header) + bytes(l1_size * 8)


def _keep(size, data):
    if len(data) <= EMPTY_QCOW2_MAX_BYTES:
        if len(_EMPTY_QCOW2) >= EMPTY_QCOW2_SIZES:
            _EMPTY_QCOW2.pop(next(iter(_EMPTY_QCOW2)), None)
        _EMPTY_QCOW2[size] = data


def create_empty_qcow2(path, size):
    """Create an empty qcow2 image of ``size`` bytes, like ``create``.

    A new qcow2 image without a backing file is metadata only (header,
    refcount table and block, L1 table), and qemu-img writes the same
    bytes for the same virtual size. The first image of each size is made
    by ``qemu-img create``; its bytes are kept in memory and written for
    the later ones, which then cost no process (a qemu-img run is 10-50 ms
    on a busy host, before a backup job can start). Once
    :func:`confirm_empty_qcow2` has checked that two sizes differ only in
    the header's size and L1 size (as qemu-img writes them, for disks up to
    4 TiB), the image of a new size is derived from the first one, without
    a process either.

    :raises: :class:`exception.QemuImgFailed`
    """
    size = int(size)
    data = _EMPTY_QCOW2.get(size)
    if data is None and _TEMPLATE['confirmed']:
        data = _derived_empty_qcow2(size, _TEMPLATE['prefix'])
        if data is not None:
            _keep(size, data)
    if data is None:
        create(path, 'qcow2', size)
        with open(path, 'rb') as f:
            data = f.read(EMPTY_QCOW2_MAX_BYTES + 1)
        _keep(size, data)
        if _TEMPLATE['prefix'] is None:
            prefix = _template_of(data)
            if prefix is not None:
                _TEMPLATE.update(prefix=prefix, size=size)
        return
    # NOTE: the mode qemu-img gives a new file (0644, less the umask).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, 'wb') as f:
        f.write(data)


def confirm_empty_qcow2(directory):
    """Check once that new qcow2 files can be derived from the first one.

    Runs ``qemu-img create -f qcow2`` for a second size (a file in
    ``directory``, removed) and compares its bytes with the ones derived
    from the first file of this process; if they are equal, later
    :func:`create_empty_qcow2` calls of new sizes run no process. Meant to
    run while a backup job copies (off the snapshot's critical path); it
    never raises: a failure leaves the check for a later call, a mismatch
    (another qemu-img layout) turns the derivation off for this process.
    """
    if _TEMPLATE['prefix'] is None or _TEMPLATE['confirmed'] is not None:
        return
    probe_size = 3 * units.Gi + _QCOW2_CLUSTER
    if probe_size == _TEMPLATE['size']:
        probe_size += _QCOW2_L2_SPAN
    probe = os.path.join(directory, 'empty-qcow2-probe')
    try:
        create(probe, 'qcow2', probe_size)
        with open(probe, 'rb') as f:
            real = f.read(EMPTY_QCOW2_MAX_BYTES + 1)
    except Exception as e:
        LOG.debug('Could not check the derivation of empty qcow2 files: '
                  '%s', e)
        return
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    derived = _derived_empty_qcow2(probe_size, _TEMPLATE['prefix'])
    _TEMPLATE['confirmed'] = derived == real
    if _TEMPLATE['confirmed']:
        _keep(probe_size, real)
        LOG.debug('Empty qcow2 targets of new sizes are derived from the '
                  'one qemu-img created for %d bytes', _TEMPLATE['size'])
    else:
        LOG.info('qemu-img create writes empty qcow2 files this driver '
                 'cannot derive from one another: each new size runs '
                 'qemu-img create')


#: The size of the first empty qcow2 file :func:`prepare_empty_qcow2` has
#: qemu-img create (any size would do: the others are derived from it).
PREPARED_QCOW2_SIZE = units.Gi


def prepare_empty_qcow2(directory):
    """Run, ahead of the first snapshot, the qemu-img creates it would run.

    The first :func:`create_empty_qcow2` of a process runs ``qemu-img
    create`` before its backup job can start, and the first job runs
    :func:`confirm_empty_qcow2`; called once when the service starts, both
    happen here (files in ``directory``, removed), and a snapshot's target
    of any size up to 4 TiB is written without a process from the first
    one on. Never raises: a failure leaves both steps to the snapshots.
    """
    if _TEMPLATE['prefix'] is None:
        path = os.path.join(directory, 'empty-qcow2-template')
        try:
            create_empty_qcow2(path, PREPARED_QCOW2_SIZE)
        except Exception as e:
            LOG.debug('Could not prepare the empty qcow2 file of the first '
                      'snapshot: %s', e)
            return
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
    confirm_empty_qcow2(directory)


def _convert_cache_mode(dest):
    """Return the ``-t`` of a convert to ``dest``: ``[snapdriver]
    convert_cache_mode``, with ``none`` turned into ``writeback`` where the
    filesystem has no direct I/O, as Nova does.
    """
    mode = CONF.snapdriver.convert_cache_mode
    if mode == 'none' and not nova_privsep_utils.supports_direct_io(
            os.path.dirname(os.path.abspath(dest))):
        LOG.debug('No direct I/O in the directory of %s: converting with '
                  'cache mode writeback', dest)
        mode = 'writeback'
    return mode


def _output_args(dest_fmt, compress):
    """The write options of a convert: compression, out-of-order writes.

    NOTE: out-of-order writes (``-W``) let qemu-img keep several requests
    in flight; they are safe because nobody reads the output until the
    convert returns. With ``-c`` they also let qemu-img compress clusters
    in parallel (QEMU compresses in a thread pool): measured on the
    development host, a 1 GiB disk with 500 MiB of data, zlib took 59.7 s
    without ``-W`` (the stock driver's command) and 30.6 s with it, for
    the same image; zstd 5.8 s and 2.9 s, 1.5% smaller.
    """
    args = ['-W']
    if compress and dest_fmt == 'qcow2':
        args += ['-c', '-o', 'compression_type=%s' %
                 CONF.snapdriver.compression_type]
    return args


def convert(src, src_fmt, dest, dest_fmt, snapshot_name=None,
            compress=False, timeout=None, force_share=False):
    """Copy an image, or one of its internal snapshots, to a new file.

    The output is flat: data from the whole backing chain is copied.

    :param src: the image to read.
    :param src_fmt: its format (never probed).
    :param dest: the file to write; it must not hold data anyone needs.
    :param dest_fmt: the output format.
    :param snapshot_name: read this internal snapshot instead of the
        current state (``-l snapshot.name=``; QEMU 3.0 removed ``-s``).
    :param compress: compress a qcow2 output (``-c``, with ``[snapdriver]
        compression_type``).
    :param timeout: seconds before qemu-img is killed; defaults to
        ``[snapdriver] qemu_img_timeout``.
    :param force_share: open ``src`` although a running QEMU holds it
        locked (``-U``). Only for reading an internal snapshot: its tables
        and clusters are shared with the active layer, which QEMU copies
        before it writes them, so they never change under the reader.
    :raises: :class:`exception.QemuImgFailed`,
        :class:`exception.QemuImgTimeout`

    The output is written with the cache mode of ``[snapdriver]
    convert_cache_mode`` (``-t``).
    """
    args = ['convert', '-f', _check_format(src_fmt),
            '-O', _check_format(dest_fmt)]
    if snapshot_name:
        args += ['-l', 'snapshot.name=%s' % snapshot_name]
    if force_share:
        if not snapshot_name:
            raise ValueError('force_share only reads an internal snapshot')
        args.append('-U')
    args += ['-t', _convert_cache_mode(dest)]
    args += _output_args(dest_fmt, compress)
    args += ['--', src, dest]
    _run('convert', src, args,
         timeout=timeout or CONF.snapdriver.qemu_img_timeout)


def nbd_unix_uri(socket, export):
    """Return the ``nbd+unix://`` URI of export ``export`` at ``socket``.

    The socket path is percent-encoded: QEMU decodes the query of an NBD
    URI, so a path holding ``&``, ``?`` or ``%`` still names that file.
    """
    return 'nbd+unix:///%s?socket=%s' % (
        urllib.parse.quote(export, safe=''),
        urllib.parse.quote(socket, safe='/'))


#: Requests in flight of a convert from NBD (``-m``): qemu-img's default
#: of 8 left the export's server idle between replies here.
NBD_COROUTINES = 16


def convert_from_nbd(uri, dest, dest_fmt, compress=False, timeout=None):
    """Copy the content of an NBD export into a new image file.

    The export is read as ``raw`` (``-f raw``, never probed: it is the
    guest's disk content, as a pull-mode backup job exports it). qemu-img
    asks the server which ranges hold data (NBD block status,
    ``base:allocation``) and writes nothing for holes and zeroes, so the
    output holds only the allocated data.

    :param uri: the export, e.g. from :func:`nbd_unix_uri`.
    :param dest: the file to write; it must not hold data anyone needs.
    :param dest_fmt: the output format.
    :param compress: compress a qcow2 output (``-c``, with ``[snapdriver]
        compression_type``).
    :param timeout: seconds before qemu-img is killed; defaults to
        ``[snapdriver] qemu_img_timeout``.
    :raises: :class:`exception.QemuImgFailed`,
        :class:`exception.QemuImgTimeout`

    The output is written with the cache mode of ``[snapdriver]
    convert_cache_mode`` (``-t``), with :data:`NBD_COROUTINES` requests in
    flight (``-m``).
    """
    args = ['convert', '-f', 'raw', '-O', _check_format(dest_fmt),
            '-t', _convert_cache_mode(dest), '-m', NBD_COROUTINES]
    args += _output_args(dest_fmt, compress)
    args += ['--', uri, dest]
    _run('convert', uri, args,
         timeout=timeout or CONF.snapdriver.qemu_img_timeout)


def rebase(path, fmt, backing_file, backing_fmt=None, timeout=None):
    """Change the backing file of an image, keeping its content (safe mode).

    With ``backing_file=''`` the data of the whole old backing chain that
    the image does not already hold is copied into it, and the image
    becomes standalone.

    :param path: the image to rebase; nothing may be using it.
    :param fmt: its format (never probed).
    :param backing_file: the new backing file, or ``''`` for none.
    :param backing_fmt: format of the new backing file; required with it.
    :param timeout: seconds before qemu-img is killed; defaults to
        ``[snapdriver] qemu_img_timeout``.
    :raises: :class:`exception.QemuImgFailed`,
        :class:`exception.QemuImgTimeout`
    """
    # NOTE: cache mode 'unsafe' (no flush per write), as qemu-img convert
    # uses for its target by default: the default writeback mode made the
    # flatten of a live snapshot ~8x slower than a convert of the same data.
    # The file is a temporary output nobody reads until we return; a host
    # crash fails the snapshot anyway.
    args = ['rebase', '-f', _check_format(fmt), '-t', 'unsafe',
            '-b', backing_file]
    if backing_file:
        args += ['-F', _check_format(backing_fmt)]
    args += ['--', path]
    _run('rebase', path, args,
         timeout=timeout or CONF.snapdriver.qemu_img_timeout)


def measure(src, src_fmt, dest_fmt, snapshot_name=None):
    """Return the bytes a :func:`convert` of ``src`` to ``dest_fmt`` needs.

    :param src: the image to measure.
    :param src_fmt: its format (never probed).
    :param dest_fmt: the output format.
    :param snapshot_name: measure this internal snapshot instead.

    The image is opened with ``--force-share``: a running guest's disk can
    be measured, and the result is an estimate for a free-space check.

    :returns: the ``required`` size in bytes, as reported by qemu-img.
    :raises: :class:`exception.QemuImgFailed`
    """
    args = ['measure', '--output=json', '--force-share',
            '-O', _check_format(dest_fmt), '-f', _check_format(src_fmt)]
    if snapshot_name:
        args += ['-l', 'snapshot.name=%s' % snapshot_name]
    args += ['--', src]
    out, _err = _run('measure', src, args, prlimit=QEMU_IMG_LIMITS)
    return int(json.loads(out)['required'])


def check(path, fmt):
    """Run ``qemu-img check`` and return its JSON report.

    :param path: the image to check.
    :param fmt: its format (never probed); raw images have nothing to
        check and return ``{}``.
    :returns: the parsed report (``corruptions``, ``leaks``...).
    :raises: :class:`exception.QemuImgFailed` when the image is corrupt or
        cannot be read.
    """
    if fmt == 'raw':
        return {}
    out, _err = _run('check', path,
                     ['check', '-f', _check_format(fmt), '--output=json',
                      '--', path], prlimit=QEMU_IMG_LIMITS)
    return json.loads(out)


def repair(path, fmt):
    """Repair a qcow2 image's metadata (``qemu-img check -r all``).

    For leaked clusters and stale ``COPIED`` flags, which a killed
    ``qemu-img snapshot`` can leave (its refcounts raised and written, its
    snapshot table not). The image must not be in use.

    :returns: the JSON report of the check after the repair.
    :raises: :class:`exception.QemuImgFailed` when the image cannot be
        repaired.
    """
    out, _err = _run('check -r all', path,
                     ['check', '-r', 'all', '-f', _check_format(fmt),
                      '--output=json', '--', path],
                     prlimit=QEMU_IMG_LIMITS)
    return json.loads(out)


def _image_opts(path, fmt):
    """Return an ``--image-opts`` string naming ``path`` and its format.

    NOTE: ``qemu-img snapshot`` has no ``-f`` option (QEMU 7.2); image
    options are the only way to give it the format instead of letting it
    probe. Commas in a path are doubled, QEMU's escape for option values.
    """
    return 'driver=%s,file.driver=file,file.filename=%s' % (
        _check_format(fmt), path.replace(',', ',,'))


def snapshot_create(path, name, fmt='qcow2'):
    """Create an internal snapshot ``name`` in a qcow2 image.

    The image must not be in use: qemu-img takes the image lock and fails
    if a running QEMU holds it.

    :raises: :class:`exception.QemuImgFailed`,
        :class:`exception.QemuImgTimeout`
    """
    _run('snapshot create', path,
         ['snapshot', '--image-opts', '-c', name, _image_opts(path, fmt)],
         timeout=CONF.snapdriver.qemu_img_timeout)


def snapshot_delete(path, name, fmt='qcow2'):
    """Delete the internal snapshot ``name`` of a qcow2 image.

    :raises: :class:`exception.QemuImgFailed`,
        :class:`exception.QemuImgTimeout`
    """
    _run('snapshot delete', path,
         ['snapshot', '--image-opts', '-d', name, _image_opts(path, fmt)],
         timeout=CONF.snapdriver.qemu_img_timeout)


def snapshot_list(path, fmt='qcow2', force_share=False):
    """Return the names of the internal snapshots of a qcow2 image.

    :param force_share: read the table of an image a running QEMU holds
        locked (``-U``).
    :raises: :class:`exception.QemuImgFailed`
    """
    img = info(path, fmt, force_share=force_share)
    return [s['name'] for s in (img.snapshots or [])]


def compare(a, a_fmt, b, b_fmt, strict=False):
    """Return True when two images hold the same guest-visible content.

    :param strict: also fail when the images differ in size or when one
        has allocated zeroes where the other has a hole.
    :raises: :class:`exception.QemuImgFailed` on errors (exit code 2).
    """
    args = ['compare', '-f', _check_format(a_fmt), '-F', _check_format(b_fmt)]
    if strict:
        args.append('-s')
    args += ['--', a, b]
    try:
        processutils.execute(*_command(args), check_exit_code=[0])
        return True
    except processutils.ProcessExecutionError as e:
        if e.exit_code == 1:
            return False
        raise exception.QemuImgFailed(action='compare', path=a,
                                      reason=(e.stderr or '').strip())
