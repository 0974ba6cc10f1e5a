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

"""The load benchmark: N instances of one host snapshotted at once.

``python -m snapdriver.bench --load 1,2,4,8`` runs, for every N, N guests
on this host: up to ``--load-writers`` of them are writer guests (real
Linux guests writing sequence-numbered blocks to a small qcow2 overlay on
a raw base, :class:`writer_guest.WriterGuest`), the others idle BIOS-only
domains on a small Nova-shaped disk of random data
(:class:`fixtures.DiskImages`). All N are snapshotted at once through one
real :class:`snapdriver.driver.LibvirtSnapshotDriver` with its default
strategies, admitted as Nova 34's compute manager admits
``snapshot_instance`` (:class:`ComputeManagerAdmission`), and every image
is verified: a writer's must be a crash-consistent prefix of its writes
holding at least what was written before the snapshot began, an idle
domain's must equal its disk (``qemu-img compare`` with the reference).

Each N is run with every snapshot succeeding, then once per
``--load-fail`` with the first guest's snapshot failing (its image upload
raises; its backup job is declared timed out once started, so its cleanup
aborts it while the others' jobs run; or its ``backupBegin`` and
``blockCopy`` are refused): it must fail and leave its guest as it was,
its neighbours must succeed and verify. In every run spies on the libvirt
job aborts and the file removals check that no snapshot ended another
instance's job or removed another instance's work directory.

Writes ``load-results.json`` and ``load-results.md`` to ``--output-dir``.
"""

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import libvirt
from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import exception as nova_exception
from nova import thread_pool_factory
from nova import utils as nova_utils
from nova.virt import fake as fake_virt
from oslo_config import fixture as config_fixture
from oslo_utils import units

from snapdriver import conf
from snapdriver import driver as snap_driver
from snapdriver import exception
from snapdriver import qemu_img
from snapdriver import runner
from snapdriver import strategies
from snapdriver.strategies import live_backup
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import writer_guest

CONF = conf.CONF

#: Failures --load-fail can inject into one of the N snapshots.
FAILURES = ('upload', 'timeout', 'job')


def add_arguments(parser):
    """Add the load mode's options to the benchmark's parser."""
    group = parser.add_argument_group(
        'load mode', 'N instances of this host snapshotted at once through '
        'one driver, admitted as Nova\'s compute manager admits them '
        '(--writer-blocks and --writer-rate apply to the writer guests); '
        'writes load-results.json and load-results.md')
    group.add_argument('--load', metavar='N[,N...]', default=None,
                       help='numbers of instances to snapshot at once, '
                            'e.g. 1,2,4,8')
    group.add_argument('--load-writers', type=int, default=8,
                       help='at most this many of the N guests are writer '
                            'guests (real Linux guests, under TCG here); '
                            'the others are idle BIOS-only domains '
                            '(default %(default)s)')
    group.add_argument('--load-disk-mib', type=int, default=256,
                       help='virtual size of an idle domain\'s disk '
                            '(default %(default)s)')
    group.add_argument('--load-data-mib', type=int, default=64,
                       help='random data in an idle domain\'s disk, half '
                            'in the base, half in the overlay (default '
                            '%(default)s)')
    group.add_argument('--load-fail', default='upload,timeout',
                       help='comma-separated, how the one failing snapshot '
                            'fails, a run each: "upload" (its image upload '
                            'raises), "timeout" (its backup job is declared '
                            'timed out once started: its cleanup aborts it '
                            'while the others run), "job" (its backup and '
                            'block copy jobs are refused) (default '
                            '%(default)s)')
    group.add_argument('--load-repeat', type=int, default=1,
                       help='runs of every N and failure (default '
                            '%(default)s)')
    group.add_argument('--load-max-concurrent-snapshots', type=int,
                       default=None,
                       help='[DEFAULT] max_concurrent_snapshots (default: '
                            'Nova\'s own)')


def check_args(parser, args):
    """Parse and check the load options; ``args.load_list`` gets the Ns."""
    args.load_list = None
    if args.load is None:
        return
    try:
        args.load_list = [int(n) for n in args.load.split(',') if n.strip()]
    except ValueError:
        parser.error('--load takes numbers, e.g. 1,2,4,8')
    if not args.load_list or min(args.load_list) < 1:
        parser.error('--load takes positive numbers')
    args.load_fail_list = [f.strip() for f in args.load_fail.split(',')
                           if f.strip()]
    bad = set(args.load_fail_list) - set(FAILURES)
    if bad:
        parser.error('unknown --load-fail: %s (known: %s)' % (
            ', '.join(sorted(bad)), ', '.join(FAILURES)))
    if args.load_repeat < 1:
        parser.error('--load-repeat must be at least 1')
    if args.load_writers < 0:
        parser.error('--load-writers must not be negative')
    if not (32 * units.Ki <= args.load_data_mib * units.Mi <=
            args.load_disk_mib * units.Mi // 2):
        parser.error('--load-data-mib must be at most half of '
                     '--load-disk-mib')
    if (args.load_max_concurrent_snapshots is not None and
            args.load_max_concurrent_snapshots < 1):
        parser.error('--load-max-concurrent-snapshots must be positive')


class ComputeManagerAdmission(object):
    """How Nova 34's compute manager admits concurrent snapshots.

    ``ComputeManager.__init__`` makes ``_snapshot_semaphore``: in eventlet
    mode a ``threading.Semaphore`` of ``[DEFAULT] max_concurrent_snapshots``
    (``thread_pool_factory.get_max_concurrent_snapshots``); in native
    threading mode, nova-compute's default since Nova 33
    (``nova/cmd/compute.py`` patches with ``backend='threading'``), an
    ``UnlimitedSemaphore``, the limit then being the size of the
    ``LONG_TASK`` executor, ``max(max_concurrent_builds,
    max_concurrent_snapshots)``. ``snapshot_instance`` runs
    ``with self._snapshot_semaphore: self._snapshot_instance(...)`` on that
    executor (``_start_recorded_task``). This does the same with Nova's own
    functions, and ``init_host``'s ``disk_ops_semaphore`` of ``[compute]
    max_concurrent_disk_ops``.

    :ivar limit: how many snapshots can run at once.
    """

    def __init__(self):
        self.threading_mode = nova_utils.concurrency_mode_threading()
        if self.threading_mode:
            self.semaphore = compute_utils.UnlimitedSemaphore()
        else:
            self.semaphore = threading.Semaphore(
                thread_pool_factory.get_max_concurrent_snapshots())
        self._factory = thread_pool_factory.ThreadPoolFactory()
        self.executor = self._factory.get_executor(
            thread_pool_factory.ExecutorType.LONG_TASK)
        pool = thread_pool_factory.ExecutorsPoolSize.get(
            thread_pool_factory.ExecutorType.LONG_TASK)
        self.limit = (pool if self.threading_mode else
                      min(pool, thread_pool_factory
                          .get_max_concurrent_snapshots()))
        self._disk_ops = compute_utils.disk_ops_semaphore
        if CONF.compute.max_concurrent_disk_ops != 0:
            compute_utils.disk_ops_semaphore = threading.BoundedSemaphore(
                CONF.compute.max_concurrent_disk_ops)

    def submit(self, func, *args):
        """Run ``func(*args)`` as ``snapshot_instance`` runs its work.

        :returns: a future of ``(seconds waited for the semaphore,
            seconds in func, func's exception or None)``.
        """
        queued = time.monotonic()

        def do_snapshot_instance():
            with self.semaphore:
                started = time.monotonic()
                try:
                    func(*args)
                    error = None
                except Exception as e:
                    error = e
                return started - queued, time.monotonic() - started, error

        return self.executor.submit(do_snapshot_instance)

    def close(self):
        self._factory.shutdown_all()
        compute_utils.disk_ops_semaphore = self._disk_ops


class LoadImageService(object):
    """The image API snapshot() uses; uploads to files, one may raise."""

    def __init__(self, directory):
        self.directory = directory
        self.uploads = {}
        self.metadata = {}
        self.upload_seconds = {}
        self.fail = {}

    def get(self, context, image_id):
        return {'id': image_id, 'name': 'snapshot-%s' % image_id,
                'status': 'queued'}

    def update(self, context, image_id, metadata, data=None,
               purge_props=True):
        if image_id in self.fail:
            raise self.fail[image_id]
        t0 = time.monotonic()
        self.metadata[image_id] = metadata
        if data is not None:
            path = os.path.join(self.directory, image_id)
            with open(path, 'wb') as f:
                for chunk in iter(lambda: data.read(units.Mi), b''):
                    f.write(chunk)
            self.uploads[image_id] = path
        self.upload_seconds[image_id] = time.monotonic() - t0
        return dict(metadata, id=image_id)


class Touches(object):
    """Who ends which domain's jobs and removes which work directories.

    Every libvirt job abort (``virDomainAbortJob``, ``virDomainBlockJobAbort``)
    and every file removal is recorded with the instance whose snapshot
    thread made it; a job of another domain, or a work directory named
    after another instance (:func:`runner.parse_workdir_name`), is a
    foreign touch.
    """

    def __init__(self, snapshots_directory):
        self.snapshots_directory = os.path.realpath(snapshots_directory)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.aborts = []
        self.removals = []
        self.foreign = []

    def _actor(self):
        return getattr(self.local, 'uuid', None)

    def _record(self, kind, target, what):
        actor = self._actor()
        if actor is None:
            return
        with self.lock:
            (self.aborts if kind == 'abort' else self.removals).append(
                (actor, target, what))
            if target is not None and target != actor:
                self.foreign.append({'actor': actor, 'target': target,
                                     'what': what})

    def _owner(self, path):
        path = os.path.realpath(path)
        parent = self.snapshots_directory + os.sep
        if not path.startswith(parent):
            return None
        entry = path[len(parent):].split(os.sep, 1)[0]
        parsed = runner.parse_workdir_name(entry)
        return parsed[0] if parsed else None

    @contextlib.contextmanager
    def spying(self):
        """Install the spies for the ``with`` block."""
        touches = self
        originals = {}

        def abort_spy(name):
            real_call = getattr(libvirt.virDomain, name)

            def call(dom, *args, **kwargs):
                touches._record('abort', dom.UUIDString().lower(), name)
                return real_call(dom, *args, **kwargs)
            return call

        def removal_spy(owner, name):
            real_call = getattr(owner, name)

            def call(path, *args, **kwargs):
                if isinstance(path, (str, bytes, os.PathLike)):
                    path = os.fsdecode(path)
                    touches._record('remove', touches._owner(path),
                                    '%s %s' % (name, path))
                return real_call(path, *args, **kwargs)
            call.avoids_symlink_attacks = getattr(
                real_call, 'avoids_symlink_attacks', False)
            return call

        for name in ('abortJob', 'abortJobFlags', 'blockJobAbort'):
            if hasattr(libvirt.virDomain, name):
                originals[(libvirt.virDomain, name)] = getattr(
                    libvirt.virDomain, name)
                setattr(libvirt.virDomain, name, abort_spy(name))
        for owner, name in ((shutil, 'rmtree'), (os, 'unlink'),
                            (os, 'remove'), (os, 'rmdir')):
            originals[(owner, name)] = getattr(owner, name)
            setattr(owner, name, removal_spy(owner, name))
        try:
            yield self
        finally:
            for (owner, name), value in originals.items():
                setattr(owner, name, value)

    @contextlib.contextmanager
    def acting_for(self, uuid):
        """Attribute what this thread does to instance ``uuid``."""
        self.local.uuid = uuid.lower()
        try:
            yield
        finally:
            self.local.uuid = None


@contextlib.contextmanager
def injected(failure, uuid):
    """Make the snapshot of domain ``uuid``, only, fail as ``failure`` says.

    ``job``: its ``backupBegin`` and ``blockCopy`` are refused (nothing
    started); ``timeout``: its backup job, once started, is declared timed
    out (a push job's ``live_backup.wait_done``, or a pull job's read of
    the export, ``qemu_img.convert_from_nbd``, as a real timeout raises
    them), so its cleanup aborts its job while its neighbours' jobs run.
    ``upload`` is the image service's (:class:`LoadImageService`), nothing
    here.
    """
    patches = []

    def refuse(real_call):
        def call(dom, *args, **kwargs):
            if dom.UUIDString().lower() == uuid:
                raise libvirt.libvirtError('injected failure (bench --load)')
            return real_call(dom, *args, **kwargs)
        return call

    def time_out(real_call):
        def call(request, dom, run):
            if dom.UUIDString().lower() == uuid:
                raise exception.BlockJobTimeout(
                    job='backup', disk=request.disk_path,
                    timeout=CONF.snapdriver.block_job_timeout)
            return real_call(request, dom, run)
        return call

    def read_times_out(real_call):
        # NOTE: the image is written in the snapshot's work directory,
        # whose name carries the domain's uuid (the socket's path may be
        # an alias that does not).
        def call(uri, dest, *args, **kwargs):
            if uuid in os.path.basename(os.path.dirname(dest)).lower():
                raise exception.QemuImgTimeout(
                    action='convert', path=uri,
                    timeout=CONF.snapdriver.block_job_timeout)
            return real_call(uri, dest, *args, **kwargs)
        return call

    if failure == 'job':
        for name in ('backupBegin', 'blockCopy'):
            patches.append((libvirt.virDomain, name, refuse))
    elif failure == 'timeout':
        patches.append((live_backup, 'wait_done', time_out))
        patches.append((qemu_img, 'convert_from_nbd', read_times_out))
    originals = []
    for owner, name, wrap in patches:
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrap(getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


class Member(object):
    """One of the N guests of a run."""

    def __init__(self, index, writer):
        self.index = index
        self.writer = writer
        self.fixture = None
        self.image_id = 'load-image-%d' % index
        self.result = {'index': index,
                       'kind': 'writer' if writer else 'idle',
                       'error': None, 'verified': False}

    images = None

    @property
    def uuid(self):
        return self.fixture.uuid.lower()

    @property
    def dom(self):
        return self.fixture.dom


class LoadBench(object):

    def __init__(self, args, make_instance, recorded_runs):
        self.args = args
        self.make_instance = make_instance
        self.recorded_runs = recorded_runs
        self.parent = (real.DEFAULT_IMAGES_PARENT
                       if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                       else tempfile.gettempdir())
        self.context = nova_context.get_admin_context()
        self.conf = config_fixture.Config(CONF)
        self.runs = []
        self.writers_possible = None

    def log(self, msg, *a):
        print(msg % a, file=sys.stderr, flush=True)

    # Guests

    def _set_up_member(self, member):
        # A fixture whose setUp fails has cleaned itself up already: only
        # those set up are kept for the cleanup.
        if member.writer:
            # NOTE: with N guests under TCG booting at once on 2 busy
            # cores, Linux's check of the IO-APIC timer at boot timed out
            # and panicked ("IO-APIC + timer doesn't work!") in 2 of
            # about 100 boots; no_timer_check skips that check, as guests
            # of overcommitted hosts are told to.
            fixture = writer_guest.WriterGuest(
                rate=self.args.writer_rate, extra_cmdline='no_timer_check')
        else:
            images = real.DiskImages(
                virtual_size=self.args.load_disk_mib * units.Mi,
                data_size=self.args.load_data_mib * units.Mi,
                parent_dir=self.parent, seed=member.index)
            images.setUp()
            member.images = images
            fixture = real.RealDomain(images=images, start_state='running')
        fixture.setUp()
        member.fixture = fixture
        if member.writer:
            member.result['boot_seconds'] = member.fixture.boot_seconds

    def _clean_up_member(self, member):
        for fixture in (member.fixture, member.images):
            if fixture is None:
                continue
            try:
                fixture.cleanUp()
            except Exception as e:
                self.log('cleanup of guest %d failed: %s', member.index, e)

    def set_up(self, members):
        """Boot every guest at once; raise the first failure."""
        errors = []

        def one(member):
            try:
                self._set_up_member(member)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(m,)) for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for m in members:
            if m.writer:
                m.fixture.wait_for_seq(self.args.writer_blocks, timeout=300)

    # One run

    def make_driver(self, snapdir, uploads, virt_type):
        self.conf.config(snapshots_directory=snapdir, virt_type=virt_type,
                         group='libvirt')
        drv = snap_driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(),
                                                False)
        # NOTE: nova-compute opens its libvirt connection, loads the
        # strategies and prepares the first snapshot's files once, at
        # start (init_host); keep them out of the timing.
        drv._host.get_connection()
        drv._snapshot_registry = strategies.Registry.load()
        runner.prepare_targets(snapdir)
        drv._image_api = LoadImageService(uploads)
        return drv, drv._image_api

    def run_once(self, n, fail):
        """Snapshot ``n`` guests at once; guest 0 fails when ``fail``."""
        rundir = tempfile.mkdtemp(prefix='snapdriver-bench-load-',
                                  dir=self.parent)
        os.chmod(rundir, 0o711)
        snapdir = os.path.join(rundir, 'snapshots')
        os.mkdir(snapdir, 0o711)
        uploads = tempfile.mkdtemp(prefix='snapdriver-bench-up-',
                                   dir=self.args.upload_dir)
        writers = min(n, self.writers_possible)
        members = [Member(i, i < writers) for i in range(n)]
        run = {'n': n, 'writers': writers, 'idle': n - writers,
               'failure': fail, 'victim': 0 if fail else None,
               'error': None, 'members': [m.result for m in members]}
        admission = None
        try:
            t0 = time.monotonic()
            try:
                self.set_up(members)
            except Exception:
                # Before any snapshot: the guests, not the driver.
                run['setup_failed'] = True
                raise
            run['setup_seconds'] = time.monotonic() - t0
            run['boot_seconds_max'] = max(
                [m.result['boot_seconds'] for m in members if m.writer],
                default=None)
            virt_type = ('qemu' if writers else
                         'kvm' if real.kvm_usable() else 'qemu')
            drv, images = self.make_driver(snapdir, uploads, virt_type)
            admission = ComputeManagerAdmission()
            run['admission_limit'] = admission.limit
            run['threading_mode'] = admission.threading_mode
            touches = Touches(snapdir)
            victim = members[0] if fail else None
            if fail == 'upload':
                images.fail[victim.image_id] = (
                    nova_exception.ImageNotAuthorized(
                        image_id=victim.image_id))
            self._run_snapshots(run, members, drv, admission, touches,
                                victim)
            for m in members:
                self._verify(m, images, victim)
            run['left_in_snapshots_dir'] = sorted(os.listdir(snapdir))
            run['foreign_touches'] = touches.foreign
            run['aborts'] = [list(a) for a in touches.aborts]
            run['workdir_removals'] = sum(
                1 for r in touches.removals if r[1] is not None)
        except Exception as e:
            run['error'] = '%s: %s' % (type(e).__name__, e)
            self.log('load N=%d failed: %s', n, run['error'])
        finally:
            if admission is not None:
                admission.close()
            for m in reversed(members):
                self._clean_up_member(m)
            shutil.rmtree(rundir, ignore_errors=True)
            shutil.rmtree(uploads, ignore_errors=True)
        run['ok'] = self._run_ok(run)
        return run

    def _run_snapshots(self, run, members, drv, admission, touches, victim):
        for m in members:
            if m.writer:
                m.result['seq_before'] = m.fixture.latest_seq()

        def snapshot(member):
            props = {'hw_qemu_guest_agent': 'yes'} if member.writer else {}
            instance = self.make_instance(member.uuid, props)
            with touches.acting_for(member.uuid):
                drv.snapshot(self.context, instance, member.image_id,
                             lambda task_state, expected_state=None: None)

        failing = (injected(run['failure'], victim.uuid) if victim
                   else contextlib.nullcontext())
        with touches.spying(), failing, self.recorded_runs() as records:
            t0 = time.monotonic()
            futures = [admission.submit(snapshot, m) for m in members]
            for m, future in zip(members, futures):
                waited, took, error = future.result(timeout=3600)
                m.result.update(wait_seconds=waited, seconds=took)
                if error is not None:
                    m.result['error'] = '%s: %s' % (type(error).__name__,
                                                    error)
            run['wall_seconds'] = time.monotonic() - t0
        # What snapdriver's own run record measured, inside snapshot():
        # phases (preflight, capture...), filesystem freeze.
        by_uuid = {r.request.uuid.lower(): r for r in records}
        for m in members:
            record = by_uuid.get(m.uuid)
            if record is not None:
                m.result['record'] = record.summary()

    def _verify(self, m, images, victim):
        r = m.result
        problems = []
        is_victim = m is victim
        if is_victim:
            if r['error'] is None:
                problems.append('the injected failure did not fail it')
            if m.image_id in images.uploads:
                problems.append('an image was uploaded')
        elif r['error'] is not None:
            problems.append('snapshot failed')
        else:
            fmt = images.metadata[m.image_id]['disk_format']
            path = images.uploads[m.image_id]
            r['image_format'] = fmt
            r['upload_seconds'] = images.upload_seconds.get(m.image_id)
            t0 = time.monotonic()
            if m.writer:
                try:
                    image_n, image_run = writer_guest.scan_image(path, fmt)
                    r['image_n'] = image_n
                    if image_n < r['seq_before']:
                        problems.append(
                            'the image holds %d blocks, %d were written '
                            'before the snapshot' % (image_n,
                                                     r['seq_before']))
                    m.dom.suspend()
                    try:
                        _disk_n, disk_run = writer_guest.scan_image(
                            m.fixture.disk_path, m.fixture.disk_format,
                            force_share=True)
                    finally:
                        m.dom.resume()
                    if disk_run != image_run:
                        problems.append('the writer restarted')
                except AssertionError as e:
                    problems.append('not a crash-consistent prefix: %s' % e)
            elif not real.images_equal(path, fmt,
                                       m.images.reference_path, 'raw'):
                problems.append('the image differs from the disk')
            r['verify_seconds'] = time.monotonic() - t0
        state = real.RealDomain._STATES.get(m.dom.state()[0], '?')
        r['final_state'] = state
        if state != 'running':
            problems.append('guest left %s' % state)
        if not m.dom.isPersistent():
            problems.append('guest left transient')
        if m.dom.hasManagedSaveImage(0):
            problems.append('a managed save is left')
        if m.dom.blockJobInfo('vda', 0):
            problems.append('a block job is left')
        if m.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            problems.append('a domain job is left')
        r['verified'] = not problems and not is_victim
        r['problems'] = problems

    @staticmethod
    def _run_ok(run):
        members = run['members']
        return (run['error'] is None and
                all(not m['problems'] for m in members) and
                not run.get('foreign_touches') and
                not run.get('left_in_snapshots_dir'))

    def run(self):
        self.conf.setUp()
        lock_dir = tempfile.mkdtemp(prefix='snapdriver-bench-locks-',
                                    dir=self.parent)
        try:
            self.conf.config(lock_path=lock_dir, group='oslo_concurrency')
            self.conf.config(connection_uri=real.LIBVIRT_URI,
                             snapshot_image_format=self.args.image_format,
                             group='libvirt')
            if self.args.load_max_concurrent_snapshots is not None:
                self.conf.config(max_concurrent_snapshots=(
                    self.args.load_max_concurrent_snapshots))
            reason = (writer_guest.guest_unavailable_reason()
                      if self.args.load_writers else 'none asked for')
            if reason is None:
                self.log('Building (or reusing) the writer guest...')
                writer_guest.build_guest()
                self.writers_possible = self.args.load_writers
            else:
                self.log('no writer guests: %s', reason)
                self.writers_possible = 0
            self.writers_reason = reason
            for rep in range(self.args.load_repeat):
                for n in self.args.load_list:
                    for fail in [None] + self.args.load_fail_list:
                        run = self.run_once(n, fail)
                        run['rep'] = rep
                        self.runs.append(run)
                        self.log('load rep %d N=%d %-18s %s', rep + 1, n,
                                 _kind(fail), _brief(run))
        finally:
            shutil.rmtree(lock_dir, ignore_errors=True)
            self.conf.cleanUp()


def _kind(failure):
    return 'one fails (%s)' % failure if failure else 'all'


def _brief(run):
    if run['error']:
        return 'FAILED: %s' % run['error']
    ok = [m for m in run['members'] if m['verified']]
    seconds = [m['seconds'] for m in run['members']
               if m.get('seconds') is not None and not m['error']]
    return ('%s: %d/%d verified, per snapshot median %s s max %s s, '
            'wall %.2f s, foreign touches %d' % (
                'ok' if run['ok'] else 'NOT OK', len(ok), len(run['members']),
                _f(_median(seconds)), _f(max(seconds, default=None)),
                run['wall_seconds'], len(run['foreign_touches'])))


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _f(value, fmt='%.2f'):
    return 'n/a' if value is None else fmt % value


def summarize(runs):
    """One row per N and run kind, over its repetitions.

    Per snapshot times are pooled over the repetitions, the failing
    snapshot's left out; the wall time is the median of the runs'.
    """
    out = []
    keys = []
    for run in runs:
        if (run['n'], run['failure']) not in keys:
            keys.append((run['n'], run['failure']))
    base = None
    for n, failure in keys:
        mine = [r for r in runs if (r['n'], r['failure']) == (n, failure)]
        seconds, waits, verified, expected = [], [], 0, 0
        phases = {'preflight': [], 'capture': [], 'frozen': []}
        victims_clean = 0
        for run in mine:
            if run.get('setup_failed'):
                # No snapshot was taken: counted in runs, not in guests.
                continue
            for m in run['members']:
                if m['index'] == run['victim']:
                    victims_clean += (bool(m['error']) and
                                      not m.get('problems'))
                    continue
                expected += 1
                verified += bool(m['verified'])
                if m.get('seconds') is not None and not m['error']:
                    seconds.append(m['seconds'])
                    record = m.get('record') or {}
                    for name in ('preflight', 'capture'):
                        phases[name].append(
                            record.get('phases', {}).get(name))
                    phases['frozen'].append(record.get('frozen_seconds'))
                if m.get('wait_seconds') is not None:
                    waits.append(m['wait_seconds'])
        walls = [r['wall_seconds'] for r in mine
                 if r.get('wall_seconds') is not None]
        row = {
            'n': n, 'failure': failure, 'runs': len(mine),
            'runs_ok': sum(1 for r in mine if r['ok']),
            'setup_failures': sum(1 for r in mine if r.get('setup_failed')),
            'errors': sorted({r['error'] for r in mine if r['error']}),
            'writers': mine[0]['writers'], 'idle': mine[0]['idle'],
            'verified': verified, 'expected': expected,
            'victims_clean': victims_clean if failure else None,
            'victims': (sum(1 for r in mine if not r.get('setup_failed'))
                        if failure else None),
            'median_seconds': _median(seconds),
            'max_seconds': max(seconds) if seconds else None,
            'max_wait_seconds': max(waits) if waits else None,
            'median_preflight_seconds': _median(phases['preflight']),
            'median_capture_seconds': _median(phases['capture']),
            'median_frozen_seconds': _median(phases['frozen']),
            'wall_seconds': _median(walls),
            'foreign_touches': sum(len(r.get('foreign_touches') or [])
                                   for r in mine),
            'admission_limit': mine[0].get('admission_limit'),
            'boot_seconds_max': max(
                [r['boot_seconds_max'] for r in mine
                 if r.get('boot_seconds_max') is not None], default=None),
        }
        if failure is None and base is None and row['median_seconds']:
            base = row['median_seconds']
        row['vs_first'] = (row['median_seconds'] / base
                           if base and row['median_seconds'] else None)
        out.append(row)
    return out


def markdown(table_rows):
    lines = [
        '| N | guests (writers + idle) | run | runs ok | neighbours '
        'verified | failing one failed cleanly | per snapshot median s '
        '(x first N) | per snapshot max s | preflight median s | capture '
        'median s | queued max s | total wall s | foreign touches |',
        '|' + '---|' * 13,
    ]
    for r in table_rows:
        lines.append('| %s |' % ' | '.join([
            str(r['n']), '%d + %d' % (r['writers'], r['idle']),
            _kind(r['failure']),
            '%d/%d%s' % (r['runs_ok'], r['runs'], (
                ' (%d: a guest failed to boot)' % r['setup_failures']
                if r['setup_failures'] else '')),
            '%d/%d' % (r['verified'], r['expected']),
            ('-' if r['victims_clean'] is None else
             '%d/%d' % (r['victims_clean'], r['victims'])),
            _f(r['median_seconds']) + (
                '' if r['vs_first'] is None else
                ' (x%.1f)' % r['vs_first']),
            _f(r['max_seconds']), _f(r['median_preflight_seconds']),
            _f(r['median_capture_seconds']), _f(r['max_wait_seconds']),
            _f(r['wall_seconds']), str(r['foreign_touches'])]))
    for r in table_rows:
        for error in r['errors']:
            lines.append('\nN=%d %s: %s' % (r['n'], _kind(r['failure']),
                                            error[:300]))
    return '\n'.join(lines) + '\n'


def main(args, argv, host_facts, make_instance, recorded_runs):
    """Run the load benchmark; return the exit status.

    :param host_facts: the benchmark's function describing the host.
    :param make_instance: the benchmark's function making an Instance of
        a domain uuid and image properties.
    :param recorded_runs: the benchmark's context manager collecting the
        driver's :class:`runner.SnapshotRun` records.
    """
    bench = LoadBench(args, make_instance, recorded_runs)
    facts = host_facts()
    started = time.time()
    interrupted = False
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        print('interrupted; guests and files were removed, writing what '
              'was measured', file=sys.stderr)
    facts['loadavg_end'] = os.getloadavg()
    table_rows = summarize(bench.runs)
    result = {
        'command': ' '.join(['python -m snapdriver.bench'] +
                            list(sys.argv[1:] if argv is None else argv)),
        'started': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                 time.gmtime(started)),
        'wall_seconds': time.time() - started,
        'interrupted': interrupted,
        'host': facts,
        'settings': {
            'mode': 'load', 'n': args.load_list,
            'writers_max': args.load_writers,
            'writers_possible': bench.writers_possible,
            'writers_unavailable': getattr(bench, 'writers_reason', None),
            'writer_blocks': args.writer_blocks,
            'writer_rate': args.writer_rate,
            'idle_disk_mib': args.load_disk_mib,
            'idle_data_mib': args.load_data_mib,
            'failures': args.load_fail_list,
            'repeat': args.load_repeat,
            'max_concurrent_snapshots': (
                args.load_max_concurrent_snapshots or
                CONF.max_concurrent_snapshots),
            'max_concurrent_builds': CONF.max_concurrent_builds,
            'strategies': list(CONF.snapdriver.strategies),
            'image_format': args.image_format,
            'upload_dir': args.upload_dir,
        },
        'rows': table_rows,
        'runs': bench.runs,
    }
    with open(os.path.join(args.output_dir, 'load-results.json'), 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True, default=str)
    table = markdown(table_rows)
    with open(os.path.join(args.output_dir, 'load-results.md'), 'w') as f:
        f.write(table)
    print(table)
    limits = sorted({r['admission_limit'] for r in table_rows
                     if r['admission_limit']})
    print('Per snapshot: driver.snapshot() of one instance, inside the '
          'compute manager\'s admission (at most %s at once here); wait: '
          'time queued for it; total wall: from the first submission to '
          'the last return; preflight and capture: phases of the '
          'driver\'s own record (the rest is the lock, the guest\'s facts '
          'and the upload). Foreign touches: job aborts or work directory '
          'removals one instance\'s snapshot made on another\'s.'
          % ', '.join(str(x) for x in limits))
    return 0 if all(r['ok'] for r in bench.runs) and not interrupted else 1
