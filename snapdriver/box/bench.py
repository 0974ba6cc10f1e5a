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

"""Snapshots of a guest Nova booted, timed: ``snapdriver bench-box``.

``tox -e bench-box`` brings the box up (:mod:`snapdriver.box.services`)
and, for each disk size and fill:

1. registers a root image in Glance whose data (seeded random bytes)
   Nova turns into the raw ``_base`` file, boots the writer guest from it
   through the compute API (flavor disk 0: the root disk is the image's
   size), and has the guest copy that data to another part of its disk
   (``dd`` through qemu-ga ``guest-exec``): the instance's qcow2 overlay
   then holds as much data as the base, on the disk Nova made
   (``cache='none'`` where the instances directory does direct I/O); its
   writer writes only :data:`BENCH_WRITER_RATE` blocks a second, so every
   case snapshots nearly the same data;
2. for each case (stock Nova's live and cold snapshot, each snapdriver
   strategy; nova-compute restarted with that configuration), ``repeat``
   times: evicts the instance's files from the page cache, samples the
   domain and the host's disk space every 2 ms
   (:class:`snapdriver.bench.Sampler`), sends ``createImage`` with
   keystoneauth (what the ``openstack`` client sends) and polls the server
   and the image every 0.1 s until the image is active and the server has
   no task; then downloads the image and checks it: the writer's blocks a
   valid prefix at least as long as the guest reported before, the data
   regions exactly the seeded bytes, zeroes elsewhere;
3. times bare ``qemu-img convert`` runs of the same disk (``-U``: the
   guest runs) from a cold cache, for reference.

Stock Nova here is nova-compute itself: the ``stock`` strategy calls the
inherited ``LibvirtDriver.snapshot()``; its cold case sets
``[workarounds] disable_libvirt_livesnapshot``.

What the API shows includes Nova's own steps around the driver (RPC, the
image record, the upload to Glance, the task-state updates), the same for
every case; "to upload" is when the server's task state was last seen
turning ``image_uploading`` (the driver's copy is done), to 0.1 s.
"""

import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import libvirt
from nova.privsep import utils as nova_privsep_utils
from oslo_utils import units

from snapdriver import bench as snap_bench
from snapdriver.box import client as box_client
from snapdriver.box import guest_images
from snapdriver.box import services
from snapdriver.cmd import common
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import writer_guest

#: Bytes at the start of the disk left to the writer (its blocks, then
#: zeroes); the data regions follow.
WRITER_REGION = 256 * units.Mi
#: Seconds between two polls of the server and the image.
POLL = 0.1
#: Blocks of 4 KiB the guest's writer writes a second: slow, so that the
#: disk holds (nearly) the same data for every case of a run; the writer
#: is there to show the guest runs and to check the image's point in time.
BENCH_WRITER_RATE = 2
#: Writer blocks to wait for before each snapshot (the guest runs).
BLOCKS_BEFORE = 2
#: Seconds a snapshot may take before the run counts as failed.
SNAPSHOT_TIMEOUT = 900
CHUNK = 4 * units.Mi

#: (label, [snapdriver] strategies, extra nova-cpu.conf options)
CASES = (
    ('stock-live', ['stock'], {}),
    ('stock-cold', ['stock'],
     {'workarounds': {'disable_libvirt_livesnapshot': 'True'}}),
    ('live-backup', ['live-backup'], {}),
    ('live-shallow-rebase', ['live-shallow-rebase'], {}),
    ('cold-direct-extract', ['cold-direct-extract'], {}),
    ('cold-internal', ['cold-internal'], {}),
)
COMPUTE = {'service_type': 'compute'}
IMAGE = {'service_type': 'image'}
#: createImage returns the image id in its body from 2.45 on.
MICROVERSION = {'OpenStack-API-Version': 'compute 2.45'}


class Layout(object):
    """Where the data lies on a disk of ``size`` bytes filled ``fill``.

    The writer's region, then region A (the image's data: Nova's
    ``_base``), then region B (the guest's copy of A: the overlay); half
    of the data each.
    """

    def __init__(self, size, fill):
        half = int(size * fill) // 2 // units.Mi * units.Mi
        if half <= 0 or WRITER_REGION + 2 * half > size:
            raise ValueError(
                'a %d MiB disk cannot hold %d MiB for the writer and %d MiB '
                'of data at fill %s' % (size // units.Mi,
                                        WRITER_REGION // units.Mi,
                                        2 * half // units.Mi, fill))
        self.size = size
        self.fill = fill
        self.half = half
        self.a = WRITER_REGION
        self.b = WRITER_REGION + half

    @property
    def data_bytes(self):
        return 2 * self.half

    def guest_copy_command(self):
        """The guest's shell command that copies region A to region B."""
        return ('dd if=/dev/vda of=/dev/vda bs=1M skip=%d seek=%d count=%d '
                'conv=fsync 2>&1' % (self.a // units.Mi, self.b // units.Mi,
                                     self.half // units.Mi))


def seeded_chunks(seed, length):
    """The seeded data of region A, ``CHUNK`` bytes at a time."""
    rng = random.Random(seed)
    done = 0
    while done < length:
        n = min(CHUNK, length - done)
        yield rng.randbytes(n)
        done += n


def make_root_image(directory, layout, seed):
    """Write the root image (qcow2); return ``(path, sha256 of region A)``.

    The data is written into a sparse raw file, then converted: the qcow2
    holds only the data, as Glance would store a cloud image.
    """
    raw = os.path.join(directory, 'root.raw')
    digest = hashlib.sha256()
    with open(raw, 'wb') as f:
        f.truncate(layout.size)
        f.seek(layout.a)
        for chunk in seeded_chunks(seed, layout.half):
            f.write(chunk)
            digest.update(chunk)
    path = os.path.join(directory, 'root.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    path], check=True)
    os.unlink(raw)
    return path, digest.hexdigest()


def _region(f, offset, length):
    """sha256 of ``length`` bytes at ``offset``, and whether all zero."""
    digest = hashlib.sha256()
    zero = True
    f.seek(offset)
    left = length
    while left > 0:
        data = f.read(min(CHUNK, left))
        if not data:
            data = bytes(min(CHUNK, left))
        digest.update(data)
        if zero and data.count(0) != len(data):
            zero = False
        left -= len(data)
    return digest.hexdigest(), zero


def check_image(path, fmt, layout, digest, tmpdir):
    """Check a snapshot image; return the writer's block count in it.

    :raises: AssertionError naming what is wrong.
    """
    raw = os.path.join(tmpdir, 'check.raw')
    subprocess.run(['qemu-img', 'convert', '-f', fmt, '-O', 'raw', path,
                    raw], check=True)
    try:
        size = os.path.getsize(raw)
        if size != layout.size:
            raise AssertionError('the image is %d bytes, the disk %d' % (
                size, layout.size))
        with open(raw, 'rb') as f:
            for name, offset in (('A', layout.a), ('B', layout.b)):
                got, _ = _region(f, offset, layout.half)
                if got != digest:
                    raise AssertionError(
                        'data region %s (offset %d MiB) differs from the '
                        'data written' % (name, offset // units.Mi))
            end = layout.b + layout.half
            _, zero = _region(f, end, layout.size - end)
            if not zero:
                raise AssertionError('the image holds data after the data '
                                     'regions (offset %d MiB on)' % (
                                         end // units.Mi))
        os.truncate(raw, WRITER_REGION)
        n, _run_id = writer_guest.scan_image(raw, 'raw')
        return n
    finally:
        os.unlink(raw)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs, references):
    """One row per (size, fill, case): medians of the verified runs."""
    rows = []
    keys = []
    for r in runs:
        key = (r['size_gib'], r['fill'], r['label'])
        if key not in keys:
            keys.append(key)
    for size, fill, label in keys:
        mine = [r for r in runs if (r['size_gib'], r['fill'], r['label']) ==
                (size, fill, label)]
        ok = [r for r in mine if r.get('verified')]
        row = {'size_gib': size, 'fill': fill, 'label': label,
               'ok': len(ok), 'runs': len(mine),
               'errors': sorted({r['error'] for r in mine if r.get('error')})}
        for field in ('total_seconds', 'to_upload_seconds',
                      'downtime_seconds', 'transient_seconds',
                      'peak_extra_bytes', 'image_bytes'):
            row[field] = _median([r.get(field) for r in ok])
        rows.append(row)
    for row in rows:
        same = {r['label']: r for r in rows
                if (r['size_gib'], r['fill']) == (row['size_gib'],
                                                  row['fill'])}
        stock = same.get('stock-cold' if row['label'].startswith('cold')
                         or row['label'] == 'stock-cold' else 'stock-live')
        row['x_stock'] = (row['total_seconds'] / stock['total_seconds']
                          if stock and stock['total_seconds'] and
                          row['total_seconds'] is not None else None)
        # NOTE: the fastest bare convert of this disk (the median of each
        # command, then the least).
        medians = [_median([r['seconds'] for r in references
                            if (r['size_gib'], r['fill'], r['label']) ==
                            (row['size_gib'], row['fill'], label)])
                   for label in {r['label'] for r in references}]
        ref = min([m for m in medians if m is not None], default=None)
        row['peak_x_image'] = (
            row['peak_extra_bytes'] / row['image_bytes']
            if row['peak_extra_bytes'] is not None and row['image_bytes']
            else None)
        row['to_upload_x_convert'] = (
            row['to_upload_seconds'] / ref
            if ref and row['to_upload_seconds'] is not None else None)
    return rows


def _f(value, fmt='%.2f'):
    return '-' if value is None else fmt % value


def markdown(rows, references):
    head = ('| size GiB | fill | case | ok/runs | API to image active s | '
            'x stock | to upload s (0.1 s) | to upload x fastest convert | '
            'downtime s | transient s | peak extra MiB | image MiB | '
            'peak x image |')
    lines = [head, '|' + '---|' * 13]
    for r in rows:
        lines.append('| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s '
                     '| %s | %s | %s |' % (
                         r['size_gib'], r['fill'], r['label'], r['ok'],
                         r['runs'], _f(r['total_seconds']),
                         _f(r['x_stock']), _f(r['to_upload_seconds'], '%.1f'),
                         _f(r['to_upload_x_convert']),
                         _f(r['downtime_seconds'], '%.3f'),
                         _f(r['transient_seconds'], '%.3f'),
                         _f(r['peak_extra_bytes'] and
                            r['peak_extra_bytes'] / units.Mi, '%.0f'),
                         _f(r['image_bytes'] and
                            r['image_bytes'] / units.Mi, '%.0f'),
                         _f(r['peak_x_image'])))
    refs = {}
    for r in references:
        refs.setdefault((r['size_gib'], r['fill'], r['label'],
                         r['command']), []).append(r['seconds'])
    if refs:
        lines += ['', '| size GiB | fill | reference | seconds (median) | '
                  'command |', '|---|---|---|---|---|']
        for (size, fill, label, cmd), secs in refs.items():
            lines.append('| %s | %s | %s | %.2f | `%s` |' % (
                size, fill, label, statistics.median(secs), cmd))
    return '\n'.join(lines)


class BoxBench(object):

    def __init__(self, args, out):
        self.args = args
        self.out = out
        self.t0 = time.monotonic()
        self.box = services.Box(args.box_dir, say=self.say)
        self.client = None
        self.sess = None
        self.runs = []
        self.references = []
        self.tmp = None
        self.facts = {}

    def say(self, line):
        self.out.write('[%6.1f s] %s\n' % (time.monotonic() - self.t0, line))
        self.out.flush()

    # -- the disk ------------------------------------------------------

    def boot(self, layout):
        """Register the image, boot the guest, fill the overlay.

        :returns: ``(server, sha256 of the data, image id)``.
        """
        mib = layout.size // units.Mi
        seed = mib * 1000 + int(layout.fill * 100)
        name = 'bench-%dm-%d' % (mib, int(layout.fill * 100))
        path, digest = make_root_image(self.tmp, layout, seed)
        image_id = guest_images.register_root(
            self.box, name, disk=path,
            os_command_line=guest_images.cmdline(
                self.box.state['virt_type'], rate=BENCH_WRITER_RATE))
        os.unlink(path)
        self.say('%d MiB disk, %d MiB of data in the image (%s), booting'
                 % (mib, layout.half // units.Mi, image_id))
        server = self.client.boot(name, image=image_id)
        self.client.wait_for_seq(server, 1)
        t0 = time.monotonic()
        self.client.guest_exec(server, layout.guest_copy_command(),
                               timeout=1800)
        self.say('guest %s copied %d MiB into its overlay in %.1f s' % (
            server['id'], layout.half // units.Mi, time.monotonic() - t0))
        return server, digest, image_id

    # -- one snapshot --------------------------------------------------

    def _wait(self, server_id, image_id):
        """Poll until the image is active and the server has no task.

        :returns: seconds until the task state was last seen turning
            ``image_uploading`` (None if never), and until the end.

        NOTE: the stock driver sets ``image_uploading`` for a moment
        before its copy too (for an RBD direct snapshot), then sets
        ``image_pending_upload`` back: only the last change counts.
        """
        t0 = time.monotonic()
        uploading = None
        previous = None
        active = False
        while True:
            now = time.monotonic()
            server = self.sess.get('/servers/%s' % server_id,
                                   endpoint_filter=COMPUTE).json()['server']
            task = server.get('OS-EXT-STS:task_state')
            if task == 'image_uploading' and previous != task:
                uploading = now - t0
            previous = task
            if not active:
                status = self.sess.get('/v2/images/%s' % image_id,
                                       endpoint_filter=IMAGE).json()['status']
                if status in ('killed', 'deleted', 'deactivated'):
                    raise AssertionError('image %s went %s' % (image_id,
                                                               status))
                active = status == 'active'
            if active and task is None:
                return uploading, time.monotonic() - t0
            if server['status'] == 'ERROR':
                raise AssertionError('server went to ERROR: %s' %
                                     server.get('fault'))
            if now - t0 > SNAPSHOT_TIMEOUT:
                raise AssertionError('no active image after %d s (task %s)'
                                     % (SNAPSHOT_TIMEOUT, task))
            time.sleep(POLL)

    def snapshot_once(self, label, server, layout, digest, size_gib, rep):
        result = {'size_gib': size_gib, 'fill': layout.fill, 'label': label,
                  'rep': rep, 'verified': False, 'error': None}
        name = 'snap-%s-%d' % (label, rep)
        domain = self.client.domain_name(server)
        image_id = None
        try:
            before = self.client.wait_for_seq(
                server, self.client.console_seq(server) + BLOCKS_BEFORE)
            snap_bench.evict([self.box.instances_path])
            sampler = snap_bench.Sampler(server['id'], domain, 'running',
                                         self.box.snapshots_path,
                                         self.client.instance_dir(server))
            sampler.start()
            try:
                t0 = time.monotonic()
                resp = self.sess.post(
                    '/servers/%s/action' % server['id'],
                    json={'createImage': {'name': name}},
                    endpoint_filter=COMPUTE, headers=MICROVERSION)
                image_id = resp.json()['image_id']
                to_upload, _ = self._wait(server['id'], image_id)
                total = time.monotonic() - t0
            finally:
                sampler.stop()
            result.update({
                'total_seconds': total, 'to_upload_seconds': to_upload,
                'downtime_seconds': sampler.downtime,
                'transient_seconds': sampler.transient,
                'peak_extra_bytes': sampler.peak_extra,
                'states_seen': sorted(sampler.states),
                'samples': sampler.samples,
                'strategy_used': self.client.strategy_used(server['id'])})
            image = self.sess.get('/v2/images/%s' % image_id,
                                  endpoint_filter=IMAGE).json()
            path = os.path.join(self.tmp, 'image')
            with self.sess.get('/v2/images/%s/file' % image_id,
                               endpoint_filter=IMAGE, stream=True) as resp, \
                    open(path, 'wb') as f:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
            result['image_bytes'] = os.path.getsize(path)
            try:
                n = check_image(path, image['disk_format'], layout, digest,
                                self.tmp)
            finally:
                os.unlink(path)
            if n < before:
                raise AssertionError('the image holds %d writer blocks, the '
                                     'guest had reported %d before' % (
                                         n, before))
            result['writer_blocks'] = n
            state = self.domain_state(domain)
            if state != ('running', True):
                raise AssertionError('guest left %s (persistent %s)' % state)
            result['verified'] = True
        except (AssertionError, box_client.ClientError,
                subprocess.CalledProcessError) as e:
            result['error'] = str(e)
            self.say('  FAILED: %s' % e)
        except Exception as e:
            # keystoneauth's HTTP errors and the like: the run failed.
            result['error'] = '%s: %s' % (type(e).__name__, e)
            self.say('  FAILED: %s' % result['error'])
        finally:
            if image_id:
                self.sess.delete('/v2/images/%s' % image_id,
                                 endpoint_filter=IMAGE, raise_exc=False)
        return result

    def domain_state(self, name):
        conn = libvirt.open(services.LIBVIRT_URI)
        try:
            dom = conn.lookupByName(name)
            return (real.RealDomain._STATES.get(dom.state()[0], '?'),
                    bool(dom.isPersistent()))
        finally:
            conn.close()

    def references_for(self, server, layout, size_gib):
        """Bare converts of the guest's disk, cold cache, for reference."""
        disk = os.path.join(self.client.instance_dir(server), 'disk')
        commands = [(label, cmd) for label, _fmt, cmd in
                    snap_bench.reference_commands(
                        nova_privsep_utils.supports_direct_io(
                            self.box.instances_path),
                        force_share=True, formats=('qcow2',))]
        for rep in range(self.args.repeat):
            for label, cmd in commands:
                out = os.path.join(self.tmp, 'ref.qcow2')
                snap_bench.evict([self.box.instances_path])
                t0 = time.monotonic()
                subprocess.run(cmd + ['--', disk, out], check=True)
                self.references.append({
                    'size_gib': size_gib, 'fill': layout.fill,
                    'label': label, 'rep': rep,
                    'seconds': time.monotonic() - t0,
                    'bytes': os.path.getsize(out),
                    'command': ' '.join(cmd + ['--', 'DISK', 'OUT'])})
                os.unlink(out)

    # -- the whole run -------------------------------------------------

    def cases(self):
        wanted = self.args.cases
        return [c for c in CASES if not wanted or c[0] in wanted]

    def run(self):
        self.say('starting the box in %s' % self.box.dir)
        self.box.start()
        self.facts['virt_type'] = self.box.state.get('virt_type')
        self.client = box_client.BoxClient(self.box)
        self.sess = self.box.session()
        self.tmp = tempfile.mkdtemp(prefix='bench-', dir=self.box.dir)
        for size_gib in self.args.sizes:
            for fill in self.args.fill:
                self.run_disk(size_gib, fill)

    def run_disk(self, size_gib, fill):
        layout = Layout(size_gib * units.Gi, fill)
        server, digest, image_id = self.boot(layout)
        self.references_for(server, layout, size_gib)
        for label, strategies, options in self.cases():
            self.say('%s (%d GiB, fill %s):' % (label, size_gib, fill))
            self.box.restart_compute(strategies, options)
            for rep in range(self.args.repeat):
                r = self.snapshot_once(label, server, layout, digest,
                                       size_gib, rep)
                self.runs.append(r)
                if r['verified']:
                    self.say('  %.2f s (to upload %s s), downtime %.3f s, '
                             'transient %.3f s, peak %d MiB, %s' % (
                                 r['total_seconds'],
                                 _f(r['to_upload_seconds'], '%.1f'),
                                 r['downtime_seconds'],
                                 r['transient_seconds'],
                                 r['peak_extra_bytes'] // units.Mi,
                                 r['strategy_used']))
        self.client.delete_server(server['id'])
        self.sess.delete('/v2/images/%s' % image_id, endpoint_filter=IMAGE,
                         raise_exc=False)

    def write(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        rows = aggregate(self.runs, self.references)
        facts = dict(self.facts, argv=sys.argv[1:],
                     python=platform.python_version(),
                     kernel=platform.release(), cpus=os.cpu_count(),
                     seconds=time.monotonic() - self.t0)
        with open(os.path.join(out_dir, 'box-results.json'), 'w') as f:
            json.dump({'host': facts, 'runs': self.runs,
                       'references': self.references, 'rows': rows}, f,
                      indent=2, sort_keys=True)
        text = markdown(rows, self.references)
        with open(os.path.join(out_dir, 'box-results.md'), 'w') as f:
            f.write(text + '\n')
        return rows, text

    def stop(self):
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.args.keep:
            self.say('--keep: the box stays up')
            return
        self.say('stopping the box')
        self.box.stop()


def run(args, out):
    reason = services.unavailable_reason()
    if reason:
        raise common.CliError(reason)
    unknown = set(args.cases or ()) - {c[0] for c in CASES}
    if unknown:
        raise common.CliError('unknown cases %s; known: %s' % (
            ', '.join(sorted(unknown)), ', '.join(c[0] for c in CASES)),
            common.EXIT_USAGE)
    for size in args.sizes:
        for fill in args.fill:
            try:
                Layout(size * units.Gi, fill)
            except ValueError as e:
                raise common.CliError(str(e), common.EXIT_USAGE)
    bench = BoxBench(args, out)
    try:
        bench.run()
    except services.BoxError as e:
        out.write('\nbox error: %s\n' % e)
    finally:
        bench.stop()
    rows, text = bench.write(args.output_dir)
    out.write('\n%s\n\nresults in %s\n' % (text, args.output_dir))
    failed = [r for r in bench.runs if not r['verified']]
    return (common.EXIT_OK if bench.runs and not failed
            else common.EXIT_FAILED)
