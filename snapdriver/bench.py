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

"""Benchmark snapshot strategies against the stock Nova driver.

Runs on the real host (``qemu:///system``, as root) on disks shaped as
Nova makes them: for every disk size and fill a raw base and a qcow2
overlay holding random data (part in the base, part in the overlay, some
of it over the base's) are built once, laid out as Nova's file backends
do (``instances/_base/<sha1>`` and ``instances/<uuid>/disk``, backing
format raw). Every run gets a fresh copy of both in a fresh instances
directory (``[DEFAULT] instances_path``), a fresh throwaway domain on the
copy, whose disk has the cache and io modes Nova's defaults give it on
this filesystem (``--cache-mode nova``: ``cache='none'`` where O_DIRECT
works), and a fresh snapshots directory. Each run calls ``snapshot()`` of
a real driver (Nova's own ``LibvirtDriver`` or ``LibvirtSnapshotDriver``
restricted to one strategy) with an image service that stores the upload
in a local file, then checks the uploaded image with ``qemu-img
compare``. Bare conversions of the same disk are measured in the same
run: the fastest (``qemu-img convert -t writeback -W``), the one our
strategies run (``-t unsafe -W``) and Nova's own (``-t none``).

A thread with its own libvirt connection samples, every ~2 ms, the
domain's state and persistence and the extra disk space on the host. The
fixed cost of a snapshot is the time from the ``snapshot()`` call to the
start of its copy (:attr:`runner.SnapshotRun.copy_started`; for stock
Nova, its block job or conversion); for the default strategy it is broken
down into steps (:class:`Tracer`).

Usage::

    python -m snapdriver.bench --sizes 1,2,4,8 --fill 0.25,0.75 --repeat 3

Writes ``results.json``, ``results.md`` and ``results.png`` (when
matplotlib is installed) to ``--output-dir``.

With ``--writer`` it snapshots a running guest that writes instead: every
run boots a fresh :class:`writer_guest.WriterGuest` (a real Linux guest
writing sequence-numbered blocks to its disk, with a guest agent), waits
for ``--writer-blocks`` blocks, snapshots it through the driver with
``hw_qemu_guest_agent=yes`` and checks the upload is a crash-consistent
prefix of the writes (``writer_guest.scan_image``)::

    python -m snapdriver.bench --writer --repeat 3

and writes ``writer-results.json`` and ``writer-results.md``.

With ``--load 1,2,4,8`` it snapshots N guests at once instead
(:mod:`snapdriver.bench_load`) and writes ``load-results.json`` and
``load-results.md``.
"""

import argparse
import contextlib
import json
import logging as py_logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

import libvirt
from nova import context as nova_context
from nova.network import model as network_model
from nova import objects
import nova.privsep
from nova.privsep import utils as nova_privsep_utils
from nova.virt import fake as fake_virt
from nova.virt import images as nova_images
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as nova_guest
from nova.virt.libvirt import host as nova_host
from nova.virt.libvirt import utils as nova_libvirt_utils
from oslo_config import fixture as config_fixture
from oslo_utils import strutils
from oslo_utils import units
from oslo_utils import uuidutils
import stevedore

from snapdriver import allocation
from snapdriver import bench_load
from snapdriver import conf
from snapdriver import driver as snap_driver
from snapdriver import guest_state
from snapdriver import journal
from snapdriver import policy
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver import space
from snapdriver import strategies
from snapdriver.strategies import base as strategy_base
from snapdriver.strategies import cold_internal
from snapdriver.strategies import live_backup
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import writer_guest

CONF = conf.CONF
LOG = py_logging.getLogger(__name__)

SAVE_DIR = '/var/lib/libvirt/qemu/save'
STATES = ('running', 'paused', 'shutoff')
DEFAULT_STATES = ('running', 'shutoff')
SAMPLE_INTERVAL = 0.002
QEMU_EXIT_PROBES = 3
#: --writer: blocks written before the snapshot, and the writer's rate.
WRITER_BLOCKS = 200
WRITER_RATE = 100


# Measuring


def used_bytes(path):
    """Bytes allocated on disk below ``path`` (a file or a directory)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path):
        return st.st_blocks * 512
    total = 0
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += used_bytes(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


class Sampler(threading.Thread):
    """Samples a domain and the host's disk space every ~2 ms.

    Uses its own libvirt connection. A sample that finds the domain in
    another state than ``start_state`` (or cannot find it) counts as
    downtime until the next sample; one that finds it not persistent counts
    as transient time. Extra space is the bytes used in the snapshots
    directory, plus the domain's managed-save file, plus the growth of the
    disk's directory since the sampler started.
    """

    def __init__(self, uuid, name, start_state, snapshots_dir, disk_dir,
                 interval=SAMPLE_INTERVAL):
        super().__init__(daemon=True)
        self.uuid = uuid
        self.start_state = start_state
        self.snapshots_dir = snapshots_dir
        self.disk_dir = disk_dir
        self.save_path = os.path.join(SAVE_DIR, '%s.save' % name)
        self.interval = interval
        self.samples = 0
        self.errors = 0
        self.states = set()
        self.downtime = 0.0
        self.transient = 0.0
        self.peak_extra = 0
        self.disk_baseline = used_bytes(disk_dir)
        self.started_at = None
        self.stopped_at = None
        self._stop_event = threading.Event()
        self._ready = threading.Event()

    def _space(self):
        grown = used_bytes(self.disk_dir) - self.disk_baseline
        return (used_bytes(self.snapshots_dir) + used_bytes(self.save_path) +
                max(0, grown))

    def run(self):
        conn = libvirt.open(real.LIBVIRT_URI)
        try:
            dom = conn.lookupByUUIDString(self.uuid)
            prev = None
            self.started_at = time.monotonic()
            self._ready.set()
            while True:
                stopping = self._stop_event.is_set()
                try:
                    state = real.RealDomain._STATES.get(dom.state()[0], '?')
                    persistent = bool(dom.isPersistent())
                except libvirt.libvirtError:
                    self.errors += 1
                    state, persistent = 'missing', False
                extra = self._space()
                now = time.monotonic()
                self.states.add(state)
                self.peak_extra = max(self.peak_extra, extra)
                if prev is not None:
                    p_time, p_down, p_transient = prev
                    if p_down:
                        self.downtime += now - p_time
                    if p_transient:
                        self.transient += now - p_time
                prev = (now, state != self.start_state, not persistent)
                self.samples += 1
                if stopping:
                    break
                time.sleep(self.interval)
            self.stopped_at = time.monotonic()
        finally:
            self._ready.set()
            conn.close()

    def start(self):
        super().start()
        self._ready.wait(10)

    def stop(self):
        self._stop_event.set()
        self.join(30)

    @property
    def mean_interval(self):
        if self.samples < 2 or self.stopped_at is None:
            return None
        return (self.stopped_at - self.started_at) / (self.samples - 1)


class TimedImageService(object):
    """The image API snapshot() uses; stores uploads in files, timed."""

    def __init__(self, directory):
        self.directory = directory
        self.uploads = {}
        self.metadata = {}
        self.upload_seconds = 0.0
        self.uploaded_bytes = 0

    def get(self, context, image_id):
        return {'id': image_id, 'name': 'snapshot-%s' % image_id,
                'status': 'queued'}

    def update(self, context, image_id, metadata, data=None,
               purge_props=True):
        t0 = time.monotonic()
        self.metadata[image_id] = metadata
        if data is not None:
            path = os.path.join(self.directory, image_id)
            with open(path, 'wb') as f:
                for chunk in iter(lambda: data.read(units.Mi), b''):
                    f.write(chunk)
                    self.uploaded_bytes += len(chunk)
            self.uploads[image_id] = path
        self.upload_seconds += time.monotonic() - t0
        return dict(metadata, id=image_id)


@contextlib.contextmanager
def recorded_runs():
    """Collect the :class:`runner.SnapshotRun` of our driver's snapshots.

    The driver keeps its run private; the benchmark wraps
    ``runner.captured`` to read the downtime GuestStateRecord measured.
    """
    runs = []
    original = runner.captured

    @contextlib.contextmanager
    def captured(*args, **kwargs):
        with original(*args, **kwargs) as (out_path, run):
            runs.append(run)
            yield out_path, run

    runner.captured = captured
    try:
        yield runs
    finally:
        runner.captured = original


class _TracedContext(object):
    """A context manager whose ``__enter__`` is timed by a Tracer."""

    def __init__(self, tracer, label, cm):
        self._tracer = tracer
        self._label = label
        self._cm = cm

    def __enter__(self):
        return self._tracer.call(self._label, self._cm.__enter__)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


class Tracer(object):
    """Time the steps of a snapshot, to break its fixed cost down.

    Wraps the functions, methods and context managers named in
    :func:`fixed_cost_steps` for as long as it is active, and records
    ``(label, depth, start, end)`` (``time.monotonic()``) for each call
    made by the thread that activated it; depth 0 is a call made outside
    every other traced call. A context manager's time is that of its
    ``__enter__``. The wrappers cost microseconds per call.
    """

    def __init__(self):
        self.events = []
        self._depth = 0
        self._thread = None

    def call(self, label, func, *args, **kwargs):
        if threading.get_ident() != self._thread:
            return func(*args, **kwargs)
        depth = self._depth
        self._depth += 1
        t0 = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            self._depth = depth
            name = label(*args, **kwargs) if callable(label) else label
            self.events.append((name, depth, t0, time.monotonic()))

    def wrap(self, label, func):
        def traced(*args, **kwargs):
            return self.call(label, func, *args, **kwargs)
        return traced

    def wrap_context(self, label, factory):
        def traced(*args, **kwargs):
            return _TracedContext(self, label, factory(*args, **kwargs))
        return traced

    @contextlib.contextmanager
    def active(self, steps):
        """Trace ``steps`` (see :func:`fixed_cost_steps`) in this thread."""
        self._thread = threading.get_ident()
        saved = []
        try:
            for owner, attr, label, is_context in steps:
                original = owner.__dict__[attr]
                saved.append((owner, attr, original))
                static = isinstance(original, staticmethod)
                wrapper = (self.wrap_context if is_context else self.wrap)(
                    label, original.__func__ if static else original)
                setattr(owner, attr,
                        staticmethod(wrapper) if static else wrapper)
            yield self
        finally:
            for owner, attr, original in reversed(saved):
                setattr(owner, attr, original)
            self._thread = None

    def breakdown(self, start, end):
        """The steps that began in ``[start, end)``, clipped to ``end``.

        :returns: a list of ``{'step', 'depth', 'calls', 'ms'}`` in the
            order of their first call, one per (label, depth).
        """
        steps = {}
        for label, depth, t0, t1 in sorted(self.events, key=lambda e: e[2]):
            if not start <= t0 < end:
                continue
            step = steps.setdefault((label, depth), {
                'step': label, 'depth': depth, 'calls': 0, 'ms': 0.0})
            step['calls'] += 1
            step['ms'] += (min(t1, end) - t0) * 1000
        return list(steps.values())


def fixed_cost_steps(strategy_name):
    """What :class:`Tracer` times in our driver's snapshot() of a strategy.

    :returns: ``(owner, attribute, label, is_context_manager)`` tuples;
        ``label`` is a string or a callable given the call's arguments.
    """
    steps = [
        (runner, 'snapshot_lock', 'snapshot lock (external)', True),
        (nova_host.Host, 'get_guest', 'Host.get_guest', False),
        (journal, 'recover', 'journal.recover', False),
        (snap_request, 'build', 'request.build', False),
        (nova_libvirt_utils, 'find_disk', 'find_disk (domain XML)', False),
        (nova_guest.Guest, 'get_config',
         'Guest.get_config (domain XML parsed)', False),
        (nova_guest.Guest, 'get_xml_desc', 'Guest.get_xml_desc (libvirt)',
         False),
        (nova_guest.Guest, 'get_power_state', 'Guest.get_power_state',
         False),
        (qemu_img, '_run', lambda action, *a, **k: 'qemu-img %s' % action,
         False),
        (snap_driver.LibvirtSnapshotDriver, 'policy_registry',
         'policy + registry narrowed', False),
        (policy, 'for_instance', 'policy.for_instance', False),
        (strategies.Registry, 'choose', 'Registry.choose', False),
        (snap_driver.LibvirtSnapshotDriver, '_create_snapshot_metadata',
         'snapshot metadata', False),
        (guest_state, 'check_quiesce', 'check_quiesce', False),
        (runner, 'check_source', 'check_source', False),
        (runner, 'detect_formats', 'format inspection', False),
        (runner, 'clean_stale_workdirs', 'clean_stale_workdirs', False),
        (runner, 'check_space', 'check_space', False),
        (runner, 'workdir', 'work directory', True),
        (guest_state, 'held', 'guest state held', True),
        (guest_state, 'quiesced', 'quiesce', True),
        (qemu_img, 'create_empty_qcow2',
         'empty qcow2 target written (qemu-img create once per size)',
         False),
        (space, 'reserve', 'space.reserve (fallocate)', False),
        (space, 'unsupported_reason', 'space.unsupported_reason', False),
        (libvirt.virDomain, 'backupBegin', 'virDomainBackupBegin', False),
        (libvirt.virDomain, 'blockCopy', 'virDomainBlockCopy', False),
        (libvirt.virDomain, 'jobStats', 'virDomainGetJobStats', False),
        (libvirt.virDomain, 'blockInfo', 'virDomainGetBlockInfo', False),
    ]
    manager = stevedore.ExtensionManager(strategies.NAMESPACE)
    cls = {ext.name: ext.plugin for ext in manager}[strategy_name]
    for attr in ('unsupported_reason', 'clean_leftovers', 'space_bound',
                 'space_needed'):
        owner = next(k for k in cls.__mro__ if attr in k.__dict__)
        steps.append((owner, attr, '%s.%s' % (strategy_name, attr), False))
    if strategy_name == 'live-backup':
        steps.append((live_backup, 'disk_targets',
                      'disk_targets (domain XML parsed)', False))
        steps.append((live_backup.LiveBackup, '_created_and_reserved',
                      'target created, its size measured alongside', False))
    if strategy_name == 'cold-internal':
        # NOTE: its copy starts after the restore: these steps are its
        # downtime, beside the managed save ("guest state held").
        steps.append((cold_internal.ColdInternal, '_mark',
                      'in-flight marker written (fsync)', False))
        steps.append((cold_internal.ColdInternal, '_room_to_run',
                      'room for the guest\'s rewrites checked', False))
        steps.append((cold_internal.ColdInternal, '_can_delete_running',
                      'libvirt record tried and dropped', False))
        steps.append((guest_state.GuestStateRecord, 'release',
                      'restore (virDomainCreate of the saved guest)', False))
    return steps


@contextlib.contextmanager
def stock_copy_start():
    """Note when stock Nova's snapshot starts copying data.

    Its live snapshot starts a block job (``BlockDevice.rebase`` with
    ``copy=True``: the copy has begun when it returns); its cold snapshot
    converts the disk (``images.convert_image``: the copy begins with the
    call). Yields a list that gets the ``time.monotonic()`` of each.
    """
    started = []
    rebase = nova_guest.BlockDevice.rebase
    convert = nova_images.convert_image

    def traced_rebase(self, *args, **kwargs):
        result = rebase(self, *args, **kwargs)
        if kwargs.get('copy'):
            started.append(time.monotonic())
        return result

    def traced_convert(*args, **kwargs):
        started.append(time.monotonic())
        return convert(*args, **kwargs)

    nova_guest.BlockDevice.rebase = traced_rebase
    nova_images.convert_image = traced_convert
    try:
        yield started
    finally:
        nova_guest.BlockDevice.rebase = rebase
        nova_images.convert_image = convert


def nova_disk_modes():
    """The cache and io modes Nova gives a file disk of an instance.

    Computed by Nova's own code with the current configuration (``[DEFAULT]
    instances_path``, ``[libvirt] disk_cachemodes``, ``[DEFAULT]
    preallocate_images``), as ``LibvirtDriver._get_guest_disk_config``
    does for a qcow2 or raw image backend: ``disk_cachemode`` (``none``
    where a file opened with O_DIRECT in ``instances_path`` takes a 4 KiB
    write, else ``writeback``), the backend's ``driver_io`` (``native``
    only with ``preallocate_images = space``), then ``_set_cache_mode``.

    :returns: ``(cache, io)``; ``io`` is ``None`` when Nova sets none.
    """
    drv = libvirt_driver.LibvirtDriver(fake_virt.FakeVirtAPI(), False)
    disk = vconfig.LibvirtConfigGuestDisk()
    disk.source_type = 'file'
    disk.driver_cache = drv.disk_cachemode
    if strutils.to_slug(CONF.preallocate_images) == 'space':
        disk.driver_io = 'native'
    drv._set_cache_mode(disk)
    return disk.driver_cache, disk.driver_io


# Host helpers


def execute(*cmd):
    subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def read_data(path, chunk=4 * units.Mi):
    """Read the allocated extents of a file; return the bytes read."""
    read = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, stop in allocation.data_extents(fd, os.fstat(fd).st_size):
            while start < stop:
                data = os.pread(fd, min(chunk, stop - start), start)
                if not data:
                    break
                start += len(data)
                read += len(data)
    finally:
        os.close(fd)
    return read


def drop_caches():
    """Write back and drop the page cache; False when not allowed."""
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
    except OSError:
        return False
    return True


def evict(paths):
    """Write back, then drop from the page cache, the files of ``paths``.

    ``paths`` are files or directories (walked). Only their pages go:
    programs and libraries (qemu-img's, libvirt's) stay cached as on a
    compute host that uses them all day.
    """
    os.sync()
    for top in paths:
        files = [top] if not os.path.isdir(top) else [
            os.path.join(d, name) for d, _dirs, names in os.walk(top)
            for name in names]
        for path in files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def tool_version(*cmd):
    try:
        out = subprocess.run(list(cmd), check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.splitlines()[0].strip() if out else None


def host_facts():
    conn = libvirt.open(real.LIBVIRT_URI)
    try:
        lib = conn.getLibVersion()
        hv = conn.getVersion()
    finally:
        conn.close()

    def dotted(v):
        return '%d.%d.%d' % (v // 1000000, v // 1000 % 1000, v % 1000)

    return {
        'hostname': platform.node(),
        'kernel': platform.release(),
        'cpus': os.cpu_count(),
        'libvirt': dotted(lib),
        'qemu': dotted(hv),
        'qemu_img': tool_version('qemu-img', '--version'),
        'kvm': real.kvm_usable(),
        'python': platform.python_version(),
        'loadavg_start': os.getloadavg(),
    }


#: libvirt's disk cache modes (``<driver cache=...>``).
CACHE_MODES = ('none', 'writeback', 'writethrough', 'directsync', 'unsafe')
#: libvirt's disk io modes (``<driver io=...>``).
IO_MODES = ('native', 'threads', 'io_uring')


def default_strategy(names):
    """The strategy of ``names`` our driver would try first by default."""
    for name in conf.DEFAULT_STRATEGIES:
        if name in names:
            return name
    return names[0] if names else None


def installed_strategies():
    """Installed strategy names (except stock) with their guest state."""
    manager = stevedore.ExtensionManager(strategies.NAMESPACE)
    found = {}
    for ext in manager:
        if ext.name == 'stock':
            continue
        found[ext.name] = getattr(ext.plugin, 'guest_state',
                                  strategy_base.GUEST_QUIET)
    return found


def make_instance(uuid, image_properties=None):
    # Nova builds instance.image_meta from the image_* system metadata.
    system_metadata = {'image_%s' % key: value
                       for key, value in (image_properties or {}).items()}
    return objects.Instance(
        uuid=uuid, kernel_id='', ramdisk_id='',
        project_id='bench-project', user_id='bench-user', os_type=None,
        image_ref='', numa_topology=None, system_metadata=system_metadata,
        pci_devices=objects.PciDeviceList(objects=[]),
        pci_requests=objects.InstancePCIRequests(requests=[]),
        info_cache=objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([])))


# The cases


class Case(object):
    """One thing to measure: a driver mode on a guest state."""

    def __init__(self, label, state, strategy=None, stock_mode=None,
                 live=False):
        self.label = label
        self.state = state
        self.strategy = strategy
        self.stock_mode = stock_mode
        self.live = live

    @property
    def key(self):
        return '%s/%s' % (self.label, self.state)

    @property
    def baseline(self):
        """The stock case this one is compared with."""
        if self.state == 'shutoff':
            return 'stock-cold/shutoff'
        return '%s/%s' % ('stock-live' if self.live else 'stock-cold',
                          self.state)


def build_cases(names, states):
    cases = []
    for state in states:
        if state != 'shutoff':
            cases.append(Case('stock-live', state, stock_mode='live',
                              live=True))
        cases.append(Case('stock-cold', state, stock_mode='cold'))
    found = installed_strategies()
    for name in names:
        live = found[name] == strategy_base.GUEST_LIVE
        for state in states:
            if live and state == 'shutoff':
                continue
            cases.append(Case(name, state, strategy=name, live=live))
    return cases


class Bench(object):

    def __init__(self, args, out_dir):
        self.args = args
        self.out_dir = out_dir
        self.parent = (real.DEFAULT_IMAGES_PARENT
                       if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                       else tempfile.gettempdir())
        self.cache = args.cache
        self.context = nova_context.get_admin_context()
        self.conf = config_fixture.Config(CONF)
        self.runs = []
        self.references = []
        self.not_applicable = {}
        self.exit_latency = None
        #: The throwaway disks' (cache, io), set by run().
        self.disk_modes = (None, None)

    def log(self, msg, *a):
        print(msg % a, file=sys.stderr, flush=True)

    def prepare_cache(self, paths):
        """Make the cache as ``--cache`` says before a measured operation.

        :param paths: the files (or directories) the operation reads.
        """
        if self.cache == 'cold':
            evict(paths)
        elif self.cache == 'cold-all' and not drop_caches():
            self.log('cannot write /proc/sys/vm/drop_caches: warm cache')
            self.cache = 'warm'

    # Per size and fill

    def master(self, size_bytes, fill):
        data = int(size_bytes * fill) // units.Mi * units.Mi
        return real.DiskImages(virtual_size=size_bytes,
                               data_size=max(data, units.Mi),
                               parent_dir=self.parent,
                               seed=size_bytes + int(fill * 1000),
                               nova_layout=True)

    def copy_disk(self, master, rundir, uuid):
        """A fresh copy of the disk, laid out as Nova does, in ``rundir``.

        ``rundir/instances/_base/<sha1>`` (raw) and
        ``rundir/instances/<uuid>/disk`` (the qcow2 overlay, rebased on
        that copy of the base).
        """
        instances = os.path.join(rundir, 'instances')
        base, overlay = real.nova_disk_paths(instances, uuid,
                                             master.image_id)
        for src, dst in ((master.base_path, base),
                         (master.overlay_path, overlay)):
            os.makedirs(os.path.dirname(dst), mode=0o711, exist_ok=True)
            execute('cp', '--reflink=auto', '--sparse=always', '--', src,
                    dst)
        # Unsafe rebase: only the header's backing path changes.
        execute('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw',
                '-b', base, overlay)
        return types.SimpleNamespace(base_path=base, overlay_path=overlay,
                                     reference_path=master.reference_path,
                                     instances_dir=instances)

    def reference_commands(self, instances_dir):
        """The bare conversions measured beside the snapshots."""
        return reference_commands(
            nova_privsep_utils.supports_direct_io(instances_dir))

    def references_for(self, size_gib, fill, master, rep):
        tmp = tempfile.mkdtemp(prefix='snapdriver-bench-ref-',
                               dir=self.parent)
        try:
            disk = self.copy_disk(master, tmp, uuidutils.generate_uuid())
            for label, fmt, cmd in self.reference_commands(
                    disk.instances_dir):
                out = os.path.join(tmp, 'out.%s' % fmt)
                self.prepare_cache([disk.instances_dir])
                t0 = time.monotonic()
                execute(*(cmd + ['--', disk.overlay_path, out]))
                took = time.monotonic() - t0
                ok = real.images_equal(out, fmt, master.reference_path,
                                       'raw')
                self.references.append({
                    'size_gib': size_gib, 'fill': fill, 'label': label,
                    'rep': rep, 'seconds': took, 'verified': ok,
                    'bytes': os.path.getsize(out),
                    'command': ' '.join(cmd)})
                os.unlink(out)
            self.prepare_cache([disk.instances_dir])
            t0 = time.monotonic()
            read = sum(read_data(path) for path in (disk.base_path,
                                                    disk.overlay_path))
            self.references.append({
                'size_gib': size_gib, 'fill': fill, 'label': 'read-data',
                'rep': rep, 'seconds': time.monotonic() - t0,
                'verified': True, 'bytes': read,
                'command': 'read the allocated extents of _base/<sha1> and '
                           '<uuid>/disk (SEEK_DATA), 4 MiB reads'})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # One run

    def make_driver(self, case, snapdir, uploads):
        """Configure and build the driver of ``case``, ready to time.

        :returns: ``(driver, image service)``.
        """
        self.conf.config(snapshots_directory=snapdir, group='libvirt')
        if not CONF.oslo_concurrency.lock_path:
            # The driver's snapshot lock, the same for every run (removed
            # in run()); the throwaway domain is ours.
            self.conf.config(lock_path=self.lock_dir,
                             group='oslo_concurrency')
        self.conf.config(disable_libvirt_livesnapshot=(
            case.stock_mode == 'cold'), group='workarounds')
        if case.strategy is None:
            drv = libvirt_driver.LibvirtDriver(fake_virt.FakeVirtAPI(),
                                               False)
        else:
            self.conf.config(strategies=[case.strategy], group='snapdriver')
            drv = snap_driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(),
                                                    False)
        # NOTE: nova-compute opens its libvirt connection, loads the
        # strategies and prepares the first snapshot's files once, at
        # start (init_host); keep them out of the timing.
        drv._host.get_connection()
        if case.strategy is not None:
            drv._snapshot_registry = strategies.Registry.load()
            runner.prepare_targets(snapdir)
        drv._image_api = TimedImageService(uploads)
        return drv, drv._image_api

    def run_once(self, case, size_gib, fill, master, rep):
        rundir = tempfile.mkdtemp(prefix='snapdriver-bench-',
                                  dir=self.parent)
        os.chmod(rundir, 0o711)
        snapdir = os.path.join(rundir, 'snapshots')
        os.mkdir(snapdir, 0o711)
        uploads = tempfile.mkdtemp(prefix='snapdriver-bench-up-',
                                   dir=self.args.upload_dir)
        domain = None
        setup_started = time.monotonic()
        result = {'size_gib': size_gib, 'fill': fill, 'label': case.label,
                  'state': case.state, 'rep': rep, 'verified': False,
                  'error': None}
        try:
            uuid = uuidutils.generate_uuid()
            disk = self.copy_disk(master, rundir, uuid)
            # NOTE: Nova decides its conversions' cache mode (-t none or
            # writeback) by the direct I/O of [DEFAULT] instances_path.
            self.conf.config(instances_path=disk.instances_dir)
            cache, io = self.disk_modes
            domain = real.RealDomain(
                images=disk, uuid=uuid, name='snapdriver-bench-%s' % uuid,
                start_state=case.state, disk_cache=cache, disk_io=io)
            result['domain'] = domain.name
            domain.setUp()
            drv, images = self.make_driver(case, snapdir, uploads)
            instance = make_instance(domain.uuid)
            tracer = Tracer()
            steps = (fixed_cost_steps(case.strategy)
                     if case.strategy is not None else [])
            self.prepare_cache([disk.instances_dir])
            sampler = Sampler(domain.uuid, domain.name, case.state, snapdir,
                              disk.instances_dir)
            sampler.start()
            with recorded_runs() as our_runs, \
                    stock_copy_start() as stock_copies, \
                    tracer.active(steps):
                t0 = time.monotonic()
                try:
                    drv.snapshot(self.context, instance, 'image-1',
                                 lambda task_state, expected_state=None:
                                 None)
                finally:
                    total = time.monotonic() - t0
                    sampler.stop()
            t1 = time.monotonic()
            copy_started = (our_runs[0].copy_started if our_runs else
                            (stock_copies[0] if stock_copies else None))
            fmt = images.metadata['image-1']['disk_format']
            verified = real.images_equal(images.uploads['image-1'], fmt,
                                         master.reference_path, 'raw')
            final = domain.state()
            intact = final == case.state and domain.is_persistent()
            result.update({
                'total_seconds': total,
                'upload_seconds': images.upload_seconds,
                'extract_seconds': total - images.upload_seconds,
                'fixed_cost_seconds': (copy_started - t0
                                       if copy_started is not None
                                       else None),
                'fixed_cost_steps': (
                    tracer.breakdown(t0, copy_started)
                    if steps and copy_started is not None else None),
                'disk_cache': cache,
                'disk_io': io,
                'downtime_sampled': sampler.downtime,
                'downtime_record': (our_runs[0].guest.downtime
                                    if our_runs else None),
                'transient_seconds': sampler.transient,
                'peak_extra_bytes': sampler.peak_extra,
                'uploaded_bytes': images.uploaded_bytes,
                'image_format': fmt,
                'samples': sampler.samples,
                'sample_interval': sampler.mean_interval,
                'sample_errors': sampler.errors,
                'states_seen': sorted(sampler.states),
                'final_state': final,
                'verified': bool(verified and intact),
                'verify_seconds': time.monotonic() - t1,
                'setup_seconds': t0 - setup_started,
            })
            if not verified:
                result['error'] = 'uploaded image differs from the disk'
            elif not intact:
                result['error'] = 'guest left %s (persistent=%s)' % (
                    final, domain.is_persistent())
        except Exception as e:
            name = type(e).__name__
            if name == 'NoApplicableSnapshotStrategy':
                result['not_applicable'] = str(e)
            result['error'] = '%s: %s' % (name, e)
            LOG.exception('Run %s failed', case.key)
        finally:
            if domain is not None:
                domain.cleanUp()
            shutil.rmtree(rundir, ignore_errors=True)
            shutil.rmtree(uploads, ignore_errors=True)
        return result

    def qemu_exit_latency(self):
        """Median seconds libvirt needs to see an idle QEMU exit.

        libvirt waits until the QEMU process is reaped; here PID 1 reaps
        only every ~2 s, so each QEMU exit (a managed save) looks longer
        than on a host with a normal init.
        """
        images = real.DiskImages(parent_dir=self.parent)
        domain = real.RealDomain(images=images, start_state='shutoff',
                                 name='snapdriver-bench-probe-%s' %
                                 uuidutils.generate_uuid()[:8])
        images.setUp()
        took = []
        try:
            domain.setUp()
            for _ in range(QEMU_EXIT_PROBES):
                domain.dom.create()
                time.sleep(0.5)
                t0 = time.monotonic()
                domain.dom.destroy()
                took.append(time.monotonic() - t0)
        finally:
            domain.cleanUp()
            images.cleanUp()
        return statistics.median(took), took

    def disk_modes_for(self, cache_mode, disk_io):
        """The disk's ``(cache, io)`` for ``--cache-mode`` and ``--disk-io``.

        ``nova``: what Nova's defaults give; ``default``: none (libvirt's).
        """
        probe = tempfile.mkdtemp(prefix='snapdriver-bench-probe-',
                                 dir=self.parent)
        try:
            self.conf.config(instances_path=probe)
            nova_cache, nova_io = nova_disk_modes()
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        chosen = []
        for given, nova_value in ((cache_mode, nova_cache),
                                  (disk_io, nova_io)):
            chosen.append(nova_value if given == 'nova' else
                          None if given == 'default' else given)
        return tuple(chosen)

    def run(self, sizes, fills, cases):
        self.conf.setUp()
        # NOTE: one lock directory for the whole benchmark: lockutils
        # recreates a removed lock_path, so one inside a run's directory
        # outlived the run.
        self.lock_dir = tempfile.mkdtemp(prefix='snapdriver-bench-locks-',
                                         dir=self.parent)
        try:
            self.conf.config(connection_uri=real.LIBVIRT_URI,
                             virt_type='kvm' if real.kvm_usable()
                             else 'qemu',
                             snapshot_image_format=self.args.image_format,
                             snapshot_compression=self.args.compress,
                             group='libvirt')
            self.conf.config(compression_type=self.args.compression_type,
                             group='snapdriver')
            self.disk_modes = self.disk_modes_for(self.args.cache_mode,
                                                  self.args.disk_io)
            self.log('Disks: cache=%s io=%s (--cache-mode %s --disk-io %s)',
                     self.disk_modes[0] or "(libvirt's default)",
                     self.disk_modes[1] or "(libvirt's default)",
                     self.args.cache_mode, self.args.disk_io)
            self.exit_latency, probes = self.qemu_exit_latency()
            self.log('QEMU exit as libvirt sees it (destroy of an idle '
                     'domain): %.2f s (%s)', self.exit_latency,
                     ', '.join('%.2f' % p for p in probes))
            for size_gib in sizes:
                size = int(size_gib * units.Gi) // units.Mi * units.Mi
                for fill in fills:
                    self.run_disk(size_gib, size, fill, cases)
        finally:
            self.conf.cleanUp()
            shutil.rmtree(self.lock_dir, ignore_errors=True)

    def run_disk(self, size_gib, size, fill, cases):
        self.log('Building the %g GiB disk (%g GiB of data)...', size_gib,
                 size_gib * fill)
        master = self.master(size, fill)
        master.setUp()
        try:
            for rep in range(self.args.repeat):
                self.references_for(size_gib, fill, master, rep)
                for case in cases:
                    if case.key in self.not_applicable:
                        continue
                    result = self.run_once(case, size_gib, fill, master, rep)
                    self.runs.append(result)
                    if result.get('not_applicable'):
                        self.not_applicable[case.key] = (
                            result['not_applicable'])
                    self.log('%g GiB fill %g rep %d %-28s %s', size_gib,
                             fill, rep + 1, case.key, _brief(result))
        finally:
            master.cleanUp()


def _brief(r):
    if r.get('error'):
        return 'FAILED: %s' % r['error']
    return ('total %.2f s, upload %.2f s, fixed %s ms, down %.3f s, '
            'transient %.3f s, peak %.0f MiB' % (
                r['total_seconds'], r['upload_seconds'],
                _f(r.get('fixed_cost_seconds') and
                   r['fixed_cost_seconds'] * 1000, '%.0f'),
                r['downtime_sampled'], r['transient_seconds'],
                r['peak_extra_bytes'] / units.Mi))


def reference_commands(direct_io, force_share=False,
                       formats=('raw', 'qcow2')):
    """The bare conversions a benchmark measures beside the snapshots.

    Returns ``(label, output format, argv)``; the caller appends ``--``,
    the source and the output. ``convert-<fmt>`` (one per format of
    ``formats``): the fastest bare convert (cache writeback, out-of-order
    writes, from a cold source cache: the output is read straight back by
    the upload, so the page cache is the right place for it).
    ``convert-unsafe``: the command our strategies run by default
    (``[snapdriver] convert_cache_mode = unsafe``, ``-W``).
    ``convert-nova``: Nova's own snapshot conversion
    (``nova.privsep.qemu.unprivileged_convert_image``), ``-t none`` where
    the instances directory has direct I/O (``direct_io``).

    :param force_share: read a disk a running QEMU holds (``-U``).
    """
    share = ['-U'] if force_share else []
    commands = [('convert-%s' % fmt, fmt,
                 ['qemu-img', 'convert'] + share +
                 ['-t', 'writeback', '-W', '-f', 'qcow2', '-O', fmt])
                for fmt in formats]
    commands.append(('convert-unsafe', 'qcow2',
                     ['qemu-img', 'convert'] + share +
                     ['-t', 'unsafe', '-W', '-f', 'qcow2', '-O', 'qcow2']))
    commands.append(('convert-nova', 'qcow2',
                     ['qemu-img', 'convert'] + share +
                     ['-t', 'none' if direct_io else 'writeback',
                      '-O', 'qcow2', '-f', 'qcow2']))
    return commands


# Reporting


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


REFERENCES = ('convert-qcow2', 'convert-raw', 'convert-unsafe', 'convert-nova',
              'read-data')


def _steps_median(runs):
    """Median ms of each fixed-cost step over ``runs``, in call order."""
    per_step = {}
    for run in runs:
        for step in run.get('fixed_cost_steps') or ():
            key = (step['step'], step['depth'])
            per_step.setdefault(key, []).append(step)
    if not per_step:
        return None
    return [{'step': key[0], 'depth': key[1],
             'calls': _median([s['calls'] for s in items]),
             # A step missing from a run took 0 ms there.
             'ms': _median([s['ms'] for s in items] +
                           [0.0] * (len(runs) - len(items)))}
            for key, items in per_step.items()]


def aggregate(bench, cases):
    """One row per (size, fill, case), medians over the verified runs."""
    rows = []
    refs = {}
    for ref in bench.references:
        refs.setdefault((ref['size_gib'], ref['fill'], ref['label']),
                        []).append(ref)
    ref_median = {k: _median([r['seconds'] for r in v if r['verified']])
                  for k, v in refs.items()}
    by_key = {}
    for run in bench.runs:
        by_key.setdefault((run['size_gib'], run['fill'],
                           '%s/%s' % (run['label'], run['state'])),
                          []).append(run)
    disks = sorted({(r['size_gib'], r['fill']) for r in bench.runs} |
                   {(r['size_gib'], r['fill']) for r in bench.references})
    for size, fill in disks:
        for case in cases:
            runs = by_key.get((size, fill, case.key), [])
            if not runs:
                continue
            ok = [r for r in runs if r['verified']]
            row = {'size_gib': size, 'fill': fill, 'label': case.label,
                   'state': case.state, 'runs': len(runs), 'ok': len(ok),
                   'errors': sorted({r['error'] for r in runs
                                     if r['error']})}
            if runs[0].get('not_applicable'):
                row['not_applicable'] = runs[0]['not_applicable']
            for field in ('total_seconds', 'upload_seconds',
                          'extract_seconds', 'fixed_cost_seconds',
                          'downtime_sampled', 'sample_interval',
                          'downtime_record', 'transient_seconds',
                          'peak_extra_bytes', 'uploaded_bytes'):
                row[field] = _median([r.get(field) for r in ok])
            row['fixed_cost_steps'] = _steps_median(ok)
            # NOTE: each managed save of a running or paused guest waits
            # for QEMU to be reaped (see Bench.qemu_exit_latency).
            exits = int(case.state != 'shutoff' and not case.live)
            row['qemu_exits'] = exits
            if row['downtime_sampled'] is not None:
                row['downtime_excl_exit'] = max(
                    0.0, row['downtime_sampled'] -
                    exits * (bench.exit_latency or 0.0))
            fmt = ok[0]['image_format'] if ok else None
            # The fastest bare convert to the same format.
            conv = ref_median.get((size, fill, 'convert-%s' % fmt))
            row['image_format'] = fmt
            row['x_convert'] = (row['extract_seconds'] / conv
                                if conv and row['extract_seconds'] is not None
                                else None)
            rows.append(row)
        fastest = ref_median.get((size, fill, 'convert-%s' %
                                  bench.args.image_format))
        for label in REFERENCES:
            items = refs.get((size, fill, label), [])
            if items:
                seconds = ref_median[(size, fill, label)]
                rows.append({
                    'size_gib': size, 'fill': fill, 'label': label,
                    'state': '-', 'runs': len(items),
                    'ok': sum(1 for r in items if r['verified']),
                    'total_seconds': seconds, 'extract_seconds': seconds,
                    'x_convert': (seconds / fastest
                                  if fastest and seconds is not None
                                  else None),
                    'uploaded_bytes': _median([r['bytes'] for r in items]),
                    'command': items[0]['command'], 'reference': True})
    index = {(r['size_gib'], r['fill'], '%s/%s' % (r['label'], r['state'])):
             r for r in rows}
    for case in cases:
        for size, fill in disks:
            row = index.get((size, fill, case.key))
            if row is None:
                continue
            stock = index.get((size, fill, case.baseline))
            row['baseline'] = case.baseline
            row['x_stock'] = (row['total_seconds'] / stock['total_seconds']
                              if stock and stock.get('total_seconds') and
                              row.get('total_seconds') is not None
                              else None)
    return rows


def _f(value, fmt='%.2f'):
    return '-' if value is None else fmt % value


def _mib(value):
    return '-' if value is None else '%.0f' % (value / units.Mi)


def _ms(seconds):
    return '-' if seconds is None else '%.0f' % (seconds * 1000)


def markdown(rows):
    lines = [
        '| size GiB | fill | mode | guest | ok/runs | total s | upload s | '
        'total-upload s | x convert | x stock | fixed cost ms | '
        'downtime s (sampled) | downtime s (record) | '
        'downtime s minus QEMU reap | transient s | peak extra MiB | '
        'uploaded MiB |',
        '|' + '---|' * 17,
    ]
    for r in rows:
        if r.get('not_applicable'):
            lines.append('| %g | %g | %s | %s | n/a | %s |%s' % (
                r['size_gib'], r['fill'], r['label'], r['state'],
                r['not_applicable'].replace('|', '/'), ' |' * 11))
            continue
        lines.append('| %s |' % ' | '.join([
            '%g' % r['size_gib'], '%g' % r['fill'], r['label'], r['state'],
            '%d/%d' % (r['ok'], r['runs']),
            _f(r.get('total_seconds')), _f(r.get('upload_seconds')),
            _f(r.get('extract_seconds')), _f(r.get('x_convert')),
            _f(r.get('x_stock')), _ms(r.get('fixed_cost_seconds')),
            _f(r.get('downtime_sampled'), '%.3f'),
            _f(r.get('downtime_record'), '%.3f'),
            _f(r.get('downtime_excl_exit'), '%.3f'),
            _f(r.get('transient_seconds'), '%.3f'),
            _mib(r.get('peak_extra_bytes')),
            _mib(r.get('uploaded_bytes'))]))
    return '\n'.join(lines) + '\n'


def markdown_references(rows):
    """The bare commands behind the reference rows."""
    seen = {}
    for r in rows:
        if r.get('reference'):
            seen.setdefault(r['label'], r['command'])
    lines = ['| reference | command |', '|---|---|']
    lines += ['| %s | `%s` |' % (label, command)
              for label, command in seen.items()]
    return '\n'.join(lines) + '\n'


def markdown_fixed_cost(rows, strategy):
    """Where the fixed cost of ``strategy`` goes, per disk and guest.

    One column per (size, fill, guest state); nested steps are indented
    and included in the step above them. ``other``: the fixed cost outside
    every traced step.
    """
    mine = [r for r in rows if r['label'] == strategy and
            r.get('fixed_cost_steps')]
    if not mine:
        return None
    order = []
    for r in mine:
        for step in r['fixed_cost_steps']:
            key = (step['step'], step['depth'])
            if key not in order:
                order.append(key)
    heads = ['%g GiB %g %s' % (r['size_gib'], r['fill'], r['state'])
             for r in mine]
    lines = ['| %s step (ms, median) | %s |' % (strategy, ' | '.join(heads)),
             '|' + '---|' * (len(mine) + 1)]
    for step, depth in order:
        cells = []
        for r in mine:
            found = [s for s in r['fixed_cost_steps']
                     if (s['step'], s['depth']) == (step, depth)]
            cells.append('%.1f' % found[0]['ms'] if found else '-')
        lines.append('| %s%s | %s |' % ('&nbsp;&nbsp;' * depth, step,
                                        ' | '.join(cells)))
    other = []
    for r in mine:
        traced = sum(s['ms'] for s in r['fixed_cost_steps']
                     if s['depth'] == 0)
        total = (r.get('fixed_cost_seconds') or 0) * 1000
        other.append('%.1f' % (total - traced))
    lines.append('| other (untraced) | %s |' % ' | '.join(other))
    lines.append('| **fixed cost** | %s |' % ' | '.join(
        _ms(r.get('fixed_cost_seconds')) for r in mine))
    return '\n'.join(lines) + '\n'


def chart(rows, path):
    """Write a PNG of downtime and total time per case, size and fill.

    :returns: the path, or ``None`` when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use('Agg')
    from matplotlib import pyplot

    rows = [r for r in rows if not r.get('reference') and
            not r.get('not_applicable')]
    keys = []
    for r in rows:
        key = '%s\n%s' % (r['label'], r['state'])
        if key not in keys:
            keys.append(key)
    disks = sorted({(r['size_gib'], r['fill']) for r in rows})
    width = 0.8 / max(1, len(disks))
    panels = (('downtime_sampled', 'guest downtime, s\n(sampled)'),
              ('transient_seconds', 'domain transient, s'),
              ('total_seconds', 'snapshot() total, s'))
    fig, axes = pyplot.subplots(len(panels), 1,
                                figsize=(max(8, len(keys) * 1.2), 10),
                                sharex=True)
    for i, (size, fill) in enumerate(disks):
        value = {('%s\n%s' % (r['label'], r['state'])): r for r in rows
                 if (r['size_gib'], r['fill']) == (size, fill)}
        xs = [k + (i - (len(disks) - 1) / 2) * width
              for k in range(len(keys))]
        for ax, (field, _title) in zip(axes, panels):
            ax.bar(xs, [(value[k].get(field) or 0) if k in value else 0
                        for k in keys], width,
                   label='%g GiB, fill %g' % (size, fill))
    for ax, (_field, title) in zip(axes, panels):
        ax.set_ylabel(title)
        ax.grid(axis='y', alpha=0.3)
    axes[0].legend()
    axes[-1].set_xticks(range(len(keys)))
    axes[-1].set_xticklabels(keys, fontsize=8, rotation=30, ha='right')
    axes[0].set_title('snapdriver strategies vs stock Nova: median of the '
                      'verified runs')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)
    return path


# Writer mode (--writer)


def frozen_seconds(events):
    """Seconds from each freeze's return to its thaw's; None if none."""
    total = None
    frozen_at = None
    for call, _count, at in events:
        if call == 'freeze':
            frozen_at = at
        elif frozen_at is not None:
            total = (total or 0.0) + at - frozen_at
            frozen_at = None
    return total


def _first_error(e):
    """The exception a fixture's setUp failed with, not its wrapper."""
    args = getattr(e, 'args', ())
    if (args and isinstance(args[0], tuple) and len(args[0]) == 3 and
            isinstance(args[0][1], BaseException)):
        return args[0][1]
    return e


def build_writer_cases(names, stock=True):
    """The live cases, then the cold ones (stock first), on a running
    guest.
    """
    cases = []
    if stock:
        cases.append(Case('stock-live', 'running', stock_mode='live',
                          live=True))
        cases.append(Case('stock-cold', 'running', stock_mode='cold'))
    found = installed_strategies()
    for name in names:
        cases.append(Case(name, 'running', strategy=name,
                          live=found[name] == strategy_base.GUEST_LIVE))
    return sorted(cases, key=lambda c: not c.live)


class WriterBench(Bench):
    """Snapshots of a running guest that writes to its disk."""

    def disk_now(self, guest):
        """(N, run id) of the guest's disk, read with the guest paused."""
        guest.dom.suspend()
        try:
            return writer_guest.scan_image(guest.disk_path,
                                           guest.disk_format,
                                           force_share=True)
        finally:
            guest.dom.resume()

    def run_once(self, case, rep):
        rundir = tempfile.mkdtemp(prefix='snapdriver-bench-',
                                  dir=self.parent)
        os.chmod(rundir, 0o711)
        snapdir = os.path.join(rundir, 'snapshots')
        os.mkdir(snapdir, 0o711)
        uploads = tempfile.mkdtemp(prefix='snapdriver-bench-up-',
                                   dir=self.args.upload_dir)
        guest = writer_guest.WriterGuest(rate=self.args.writer_rate)
        booted = False
        setup_started = time.monotonic()
        result = {'label': case.label, 'state': case.state, 'rep': rep,
                  'live': case.live, 'verified': False, 'error': None}
        try:
            guest.setUp()
            booted = True
            result.update(domain=guest.name,
                          boot_seconds=guest.boot_seconds,
                          virt_type=guest.virt_type,
                          disk_mib=guest.disk_mib)
            self.conf.config(virt_type=guest.virt_type, group='libvirt')
            drv, images = self.make_driver(case, snapdir, uploads)
            instance = make_instance(guest.uuid,
                                     {'hw_qemu_guest_agent': 'yes'})
            guest.wait_for_seq(self.args.writer_blocks, timeout=120)
            self.prepare_cache([guest.workdir])
            sampler = Sampler(guest.uuid, guest.name, case.state, snapdir,
                              guest.workdir)
            sampler.start()
            with recorded_runs() as our_runs, \
                    writer_guest.fs_freeze_spy() as freezes:
                seq_before = guest.latest_seq()
                t0 = time.monotonic()
                try:
                    drv.snapshot(self.context, instance, 'image-1',
                                 lambda task_state, expected_state=None:
                                 None)
                finally:
                    total = time.monotonic() - t0
                    sampler.stop()
            t1 = time.monotonic()
            seq_after = guest.latest_seq()
            # How far the writer got: its disk, right away (paused while
            # it is read, after the measurement).
            disk_n, disk_run = self.disk_now(guest)
            disk_read_at = time.monotonic() - t1
            # NOTE: a managed save restarts the console log (the serial
            # file is reopened, truncated): then take the first report
            # after the restore.
            restarted = seq_after < seq_before
            if restarted:
                seq_after = guest.wait_for_seq(1, timeout=30)
            fmt = images.metadata['image-1']['disk_format']
            problems = []
            image_n = image_run = None
            try:
                image_n, image_run = writer_guest.scan_image(
                    images.uploads['image-1'], fmt)
            except AssertionError as e:
                problems.append('not a crash-consistent prefix: %s' % e)
            if image_n is not None and image_n < seq_before:
                problems.append('the image holds %d blocks, the writer had '
                                'written %d before the snapshot began' % (
                                    image_n, seq_before))
            if image_run is not None and image_run != disk_run:
                problems.append('the writer restarted (the guest rebooted?)')
            final = real.RealDomain._STATES.get(guest.dom.state()[0], '?')
            if final != case.state or not guest.dom.isPersistent():
                problems.append('guest left %s (persistent=%s)' % (
                    final, bool(guest.dom.isPersistent())))
            record = our_runs[0] if our_runs else None
            result.update({
                'total_seconds': total,
                'upload_seconds': images.upload_seconds,
                'extract_seconds': total - images.upload_seconds,
                'downtime_sampled': sampler.downtime,
                'downtime_record': (record.guest.downtime
                                    if record is not None else None),
                'frozen_record': (record.quiesce.get('frozen_seconds')
                                  if record is not None else None),
                'frozen_libvirt': frozen_seconds(freezes),
                'fs_calls': [list(e[:2]) for e in freezes],
                'transient_seconds': sampler.transient,
                'peak_extra_bytes': sampler.peak_extra,
                'uploaded_bytes': images.uploaded_bytes,
                'image_format': fmt,
                'samples': sampler.samples,
                'sample_interval': sampler.mean_interval,
                'sample_errors': sampler.errors,
                'states_seen': sorted(sampler.states),
                'final_state': final,
                'seq_before': seq_before,
                'image_n': image_n,
                'seq_after': seq_after,
                'console_restarted': restarted,
                'disk_n_after': disk_n,
                'disk_read_after_seconds': disk_read_at,
                'verified': not problems,
                'verify_seconds': time.monotonic() - t1,
                'setup_seconds': t0 - setup_started,
            })
            if problems:
                result['error'] = '; '.join(problems)
        except Exception as e:
            e = _first_error(e)
            name = type(e).__name__
            if name == 'NoApplicableSnapshotStrategy':
                result['not_applicable'] = str(e)
            result['error'] = '%s: %s' % (name, e)
            if not booted:
                result['error'] = 'boot failed: ' + result['error']
            LOG.exception('Run %s failed', case.key)
        finally:
            try:
                guest.cleanUp()
            except Exception:
                LOG.exception('Cleanup of %s failed', guest.name)
            shutil.rmtree(rundir, ignore_errors=True)
            shutil.rmtree(uploads, ignore_errors=True)
        return result

    def run(self, cases):
        self.conf.setUp()
        self.lock_dir = tempfile.mkdtemp(prefix='snapdriver-bench-locks-',
                                         dir=self.parent)
        try:
            self.conf.config(connection_uri=real.LIBVIRT_URI,
                             snapshot_image_format=self.args.image_format,
                             group='libvirt')
            self.exit_latency, probes = self.qemu_exit_latency()
            self.log('QEMU exit as libvirt sees it (destroy of an idle '
                     'domain): %.2f s (%s)', self.exit_latency,
                     ', '.join('%.2f' % p for p in probes))
            self.log('Building (or reusing) the writer guest...')
            writer_guest.build_guest()
            for rep in range(self.args.repeat):
                for case in cases:
                    if case.key in self.not_applicable:
                        continue
                    result = self.run_once(case, rep)
                    self.runs.append(result)
                    if result.get('not_applicable'):
                        self.not_applicable[case.key] = (
                            result['not_applicable'])
                    self.log('writer rep %d %-22s %s', rep + 1, case.label,
                             _writer_brief(result))
        finally:
            self.conf.cleanUp()
            shutil.rmtree(self.lock_dir, ignore_errors=True)


def _writer_brief(r):
    if r.get('error') and 'total_seconds' not in r:
        return 'FAILED: %s' % r['error']
    return ('%stotal %.2f s, down %.3f s, frozen %s s, transient %.3f s, '
            'seq %d -> N %s -> seq %d%s' % (
                'FAILED (%s): ' % r['error'] if r['error'] else '',
                r['total_seconds'], r['downtime_sampled'],
                _f(r['frozen_libvirt'], '%.3f'), r['transient_seconds'],
                r['seq_before'], r['image_n'], r['seq_after'],
                ' (console restarted)' if r['console_restarted'] else ''))


WRITER_FIELDS = ('total_seconds', 'upload_seconds', 'downtime_sampled',
                 'downtime_record', 'frozen_record', 'frozen_libvirt',
                 'transient_seconds', 'peak_extra_bytes', 'seq_before',
                 'image_n', 'seq_after', 'disk_n_after',
                 'disk_read_after_seconds', 'boot_seconds',
                 'sample_interval')


def aggregate_writer(runs, cases):
    """One row per case, medians over the verified runs."""
    rows = []
    for case in cases:
        mine = [r for r in runs if r['label'] == case.label]
        if not mine:
            continue
        ok = [r for r in mine if r['verified']]
        row = {'label': case.label, 'state': case.state, 'live': case.live,
               'stock': case.strategy is None, 'runs': len(mine),
               'ok': len(ok),
               'errors': sorted({r['error'] for r in mine if r['error']})}
        if mine[0].get('not_applicable'):
            row['not_applicable'] = mine[0]['not_applicable']
        for field in WRITER_FIELDS:
            row[field] = _median([r.get(field) for r in ok])
        rows.append(row)
    return rows


def markdown_writer(rows):
    lines = [
        '| mode | ok/runs | total s | downtime s (sampled) | '
        'downtime s (record) | frozen s (record) | frozen s (libvirt) | '
        'transient s | seq at start | N in image | seq at end | '
        'N on disk after | peak extra MiB |',
        '|' + '---|' * 13,
    ]
    for r in rows:
        if r.get('not_applicable'):
            lines.append('| %s | n/a | %s |%s' % (
                r['label'], r['not_applicable'].replace('|', '/'),
                ' |' * 10))
            continue
        # Stock Nova keeps no run record.
        rec = (lambda v, fmt='%.3f': 'n/a') if r['stock'] else _f
        lines.append('| %s |' % ' | '.join([
            r['label'], '%d/%d' % (r['ok'], r['runs']),
            _f(r.get('total_seconds')),
            _f(r.get('downtime_sampled'), '%.3f'),
            rec(r.get('downtime_record'), '%.3f'),
            rec(r.get('frozen_record'), '%.3f'),
            _f(r.get('frozen_libvirt'), '%.3f'),
            _f(r.get('transient_seconds'), '%.3f'),
            _f(r.get('seq_before'), '%g'), _f(r.get('image_n'), '%g'),
            _f(r.get('seq_after'), '%g'), _f(r.get('disk_n_after'), '%g'),
            _mib(r.get('peak_extra_bytes'))]))
    return '\n'.join(lines) + '\n'


def _guest_build_info():
    try:
        with open(os.path.join(writer_guest.cache_dir(), 'build-info')) as f:
            return dict(line.strip().split('=', 1) for line in f
                        if '=' in line)
    except OSError:
        return None


def writer_main(args, argv):
    reason = writer_guest.guest_unavailable_reason()
    if reason is not None:
        print('cannot benchmark the writer guest: %s' % reason,
              file=sys.stderr)
        return 2
    cases = build_writer_cases(args.strategy_list, stock=not args.no_stock)
    bench = WriterBench(args, args.output_dir)
    facts = host_facts()
    started = time.time()
    interrupted = False
    try:
        bench.run(cases)
    except KeyboardInterrupt:
        interrupted = True
        print('interrupted; guests and files were removed, writing what '
              'was measured', file=sys.stderr)
    rows = aggregate_writer(bench.runs, cases)
    facts['loadavg_end'] = os.getloadavg()
    facts['guest'] = _guest_build_info()
    facts['guest_virt_type'] = sorted({r['virt_type'] for r in bench.runs
                                       if r.get('virt_type')})
    result = {
        'command': ' '.join(['python -m snapdriver.bench'] +
                            list(sys.argv[1:] if argv is None else argv)),
        'started': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                 time.gmtime(started)),
        'wall_seconds': time.time() - started,
        'interrupted': interrupted,
        'host': facts,
        'settings': {
            'mode': 'writer', 'repeat': args.repeat,
            'strategies': args.strategy_list, 'stock': not args.no_stock,
            'writer_blocks': args.writer_blocks,
            'writer_rate': args.writer_rate,
            'block_bytes': writer_guest.BLOCK_SIZE,
            'image_properties': {'hw_qemu_guest_agent': 'yes'},
            'image_format': args.image_format,
            'cache': bench.cache,
            'upload_dir': args.upload_dir,
            'sample_interval': SAMPLE_INTERVAL,
        },
        'qemu_exit_seconds': bench.exit_latency,
        'rows': rows,
        'runs': bench.runs,
    }
    with open(os.path.join(args.output_dir, 'writer-results.json'),
              'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
    table = markdown_writer(rows)
    with open(os.path.join(args.output_dir, 'writer-results.md'), 'w') as f:
        f.write(table)
    print(table)
    print('Downtime (sampled): time the domain was not running, sampled '
          'every ~%d ms; frozen (record): snapdriver\'s frozen_seconds; '
          'frozen (libvirt): from the return of virDomainFSFreeze to the '
          'return of virDomainFSThaw, whoever called them; seq: the '
          'writer\'s progress on the console; N: blocks in the image and '
          'on the disk after the snapshot. A QEMU exit waits %s s here.'
          % (SAMPLE_INTERVAL * 1000, _f(result['qemu_exit_seconds'])))
    failed = [r for r in bench.runs
              if r['error'] and not r.get('not_applicable')]
    return 1 if failed or interrupted else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='python -m snapdriver.bench',
        description='Benchmark snapshot strategies against the stock Nova '
                    'libvirt driver on real throwaway domains.')
    parser.add_argument('--sizes', default='1,2,4,8',
                        help='virtual disk sizes in GiB, comma-separated '
                             '(fractions allowed; default %(default)s)')
    parser.add_argument('--fill', default='0.25,0.75',
                        help='fractions of the disk holding random data, '
                             'comma-separated, each at most %g: half of '
                             'the data is written in the raw _base image, '
                             'half in the qcow2 overlay, part of it over '
                             'the base\'s (default %%(default)s)'
                             % real.DiskImages.MAX_FILL)
    parser.add_argument('--cache-mode', default='nova',
                        choices=('nova', 'default') + CACHE_MODES,
                        help="the throwaway disks' libvirt cache mode: "
                             "nova (default): the cache and io modes Nova's "
                             "defaults give a file disk on this host's "
                             "filesystem (cache none where O_DIRECT works, "
                             "else writeback); default: none set, "
                             "libvirt's default (the shape measured before "
                             "this option); or a mode to set")
    parser.add_argument('--disk-io', default='nova',
                        choices=('nova', 'default') + IO_MODES,
                        help="the throwaway disks' libvirt io mode: nova "
                             "(default): what Nova's defaults give (none "
                             "set, unless [DEFAULT] preallocate_images = "
                             "space, then native); default: none set; or "
                             "a mode to set (native needs cache none or "
                             "directsync)")
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--strategies', default=None,
                        help='comma-separated strategies; default: every '
                             'installed one except stock')
    parser.add_argument('--states', default=','.join(DEFAULT_STATES),
                        help='guest states among %s' % ', '.join(STATES))
    parser.add_argument('--no-stock', action='store_true',
                        help='do not run the stock Nova driver')
    parser.add_argument('--image-format', default='qcow2',
                        choices=('qcow2', 'raw'),
                        help='[libvirt] snapshot_image_format')
    parser.add_argument('--compress', action='store_true',
                        help='[libvirt] snapshot_compression = True (stock '
                             'and every strategy)')
    parser.add_argument('--compression-type', default='zlib',
                        choices=('zlib', 'zstd'),
                        help='[snapdriver] compression_type (the '
                             'strategies; stock always uses zlib)')
    parser.add_argument('--cache', default='cold',
                        choices=('cold', 'cold-all', 'warm'),
                        help='cold (default): write back and drop the '
                             "disk's files from the page cache before each "
                             'measured operation; cold-all: sync and drop '
                             'the whole page cache (programs and libraries '
                             'too, so every first qemu-img call loads its '
                             'binary from disk); warm: leave it')
    parser.add_argument('--upload-dir', default=(
        '/dev/shm' if os.path.isdir('/dev/shm') else None),
        help='where the fake image service stores uploads (default '
             '/dev/shm: a memory sink, so the upload time is the reading '
             'of the image, not the writes of a store on the same disk)')
    parser.add_argument('--output-dir', default='bench-results')
    parser.add_argument('--no-chart', action='store_true')
    writer = parser.add_argument_group(
        'writer mode', 'snapshots of a real Linux guest that writes while '
        'it is snapshotted (--sizes, --fill, --states and the chart do not '
        'apply); writes writer-results.json and writer-results.md')
    writer.add_argument('--writer', action='store_true',
                        help='benchmark the running writer guest instead '
                             'of the throwaway disks')
    writer.add_argument('--writer-blocks', type=int, default=WRITER_BLOCKS,
                        help='blocks (4 KiB) the writer must have written '
                             'before the snapshot begins (default '
                             '%(default)s)')
    writer.add_argument('--writer-rate', type=int, default=WRITER_RATE,
                        help='blocks per second the writer writes '
                             '(default %(default)s)')
    bench_load.add_arguments(parser)
    args = parser.parse_args(argv)
    bench_load.check_args(parser, args)
    try:
        args.size_list = [float(s) for s in args.sizes.split(',')
                          if s.strip()]
        args.fill_list = [float(s) for s in args.fill.split(',')
                          if s.strip()]
    except ValueError as e:
        parser.error('--sizes and --fill take comma-separated numbers: %s'
                     % e)
    if not args.size_list or min(args.size_list) <= 0:
        parser.error('--sizes must list positive sizes')
    args.state_list = [s.strip() for s in args.states.split(',')
                       if s.strip()]
    bad = set(args.state_list) - set(STATES)
    if bad:
        parser.error('unknown states: %s' % ', '.join(sorted(bad)))
    if not args.fill_list or not all(
            0 < f <= real.DiskImages.MAX_FILL for f in args.fill_list):
        parser.error('--fill values must be in (0, %g]'
                     % real.DiskImages.MAX_FILL)
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    if args.writer_blocks < 1 or args.writer_rate < 1:
        parser.error('--writer-blocks and --writer-rate must be positive')
    installed = installed_strategies()
    if args.strategies:
        args.strategy_list = [s.strip() for s in args.strategies.split(',')
                              if s.strip()]
        unknown = set(args.strategy_list) - set(installed)
        if unknown:
            parser.error('unknown strategies: %s (installed: %s)' % (
                ', '.join(sorted(unknown)), ', '.join(sorted(installed))))
    else:
        args.strategy_list = sorted(installed)
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


def main(argv=None):
    args = parse_args(argv)
    reason = real.libvirt_unavailable_reason()
    if reason is not None:
        print('cannot benchmark: %s' % reason, file=sys.stderr)
        return 2
    objects.register_all()
    if os.geteuid() == 0:
        # NOTE: the stock live snapshot chowns its delta through Nova's
        # privsep context, which would start "sudo privsep-helper"; as root
        # the privileged functions run in-process (as Nova's tests do).
        nova.privsep.sys_admin_pctxt.set_client_mode(False)
    # Expected failures (a domain that is gone, a finished block job)
    # still raise; libvirt need not print them on stderr too.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    os.makedirs(args.output_dir, exist_ok=True)
    py_logging.basicConfig(
        filename=os.path.join(args.output_dir, 'bench.log'),
        level=py_logging.INFO,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    signal.signal(signal.SIGTERM, _interrupt)

    if args.writer:
        return writer_main(args, argv)
    if args.load_list:
        return bench_load.main(args, argv, host_facts, make_instance,
                               recorded_runs)

    cases = build_cases(args.strategy_list, args.state_list)
    if args.no_stock:
        cases = [c for c in cases if c.strategy is not None]
    bench = Bench(args, args.output_dir)
    facts = host_facts()
    started = time.time()
    interrupted = False
    try:
        bench.run(args.size_list, args.fill_list, cases)
    except KeyboardInterrupt:
        interrupted = True
        print('interrupted; domains and files were removed, writing what '
              'was measured', file=sys.stderr)
    rows = aggregate(bench, cases)
    facts['loadavg_end'] = os.getloadavg()
    result = {
        'command': ' '.join(['python -m snapdriver.bench'] +
                            list(sys.argv[1:] if argv is None else argv)),
        'started': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                 time.gmtime(started)),
        'wall_seconds': time.time() - started,
        'interrupted': interrupted,
        'host': facts,
        'settings': {
            'sizes_gib': args.size_list, 'fills': args.fill_list,
            'cache_mode': args.cache_mode, 'disk_io_mode': args.disk_io,
            'disk_cache': bench.disk_modes[0],
            'disk_io': bench.disk_modes[1],
            'layout': 'instances/_base/<sha1> (raw) + '
                      'instances/<uuid>/disk (qcow2, backing format raw)',
            'default_strategy': default_strategy(args.strategy_list),
            'repeat': args.repeat, 'strategies': args.strategy_list,
            'states': args.state_list, 'image_format': args.image_format,
            'compress': args.compress,
            'compression_type': args.compression_type,
            'lock_dir': bench.lock_dir,
            'cache': bench.cache,
            'upload_dir': args.upload_dir,
            'sample_interval': SAMPLE_INTERVAL,
        },
        'qemu_exit_seconds': bench.exit_latency,
        'rows': rows,
        'runs': bench.runs,
        'references': bench.references,
    }
    with open(os.path.join(args.output_dir, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
    table = markdown(rows)
    refs = markdown_references(rows)
    # NOTE: the default's fixed cost, and cold-internal's, which is its
    # downtime beside the managed save (its copy starts after the restore).
    breakdowns = [b for b in (
        markdown_fixed_cost(rows, name) for name in dict.fromkeys(
            [result['settings']['default_strategy'], 'cold-internal']))
        if b]
    with open(os.path.join(args.output_dir, 'results.md'), 'w') as f:
        f.write(table)
        f.write('\n' + refs)
        for breakdown in breakdowns:
            f.write('\n' + breakdown)
    print(table)
    print(refs)
    for breakdown in breakdowns:
        print(breakdown)
    print('Disks: cache=%s io=%s (--cache-mode %s --disk-io %s). '
          'x convert: '
          'total-upload over the fastest bare convert to the same format '
          '(convert-<format>). Fixed cost: from the snapshot() call to the '
          'start of the copy (backup or block copy job begun, conversion '
          'of the capture launched; after the managed save for a cold '
          'snapshot of a running guest). Downtime (sampled): time the '
          'domain was not in its starting state, sampled every ~%d ms with '
          'dom.state() from a separate libvirt connection; downtime '
          '(record): what snapdriver\'s GuestStateRecord measured. Each '
          'QEMU exit (managed save) also waits for PID 1 to reap the '
          'process: %s s here.'
          % (bench.disk_modes[0] or 'default',
             bench.disk_modes[1] or 'default', args.cache_mode,
             args.disk_io, SAMPLE_INTERVAL * 1000,
             _f(result['qemu_exit_seconds'])))
    if not args.no_chart:
        png = chart(rows, os.path.join(args.output_dir, 'results.png'))
        print('chart: %s' % (png or 'skipped, matplotlib is not installed'))
    failed = [r for r in bench.runs
              if r['error'] and not r.get('not_applicable')]
    return 1 if failed or interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
