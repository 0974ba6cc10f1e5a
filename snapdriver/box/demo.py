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

"""The main job: ``openstack server image create`` on a guest Nova booted.

``snapdriver demo`` (``tools/run-demo.sh``, ``tox -e demo``) brings the
box up (:mod:`snapdriver.box.services`), boots the writer guest through
the compute API, lets it write, and for the driver's default order and
then each installed strategy that applies (nova-compute restarted with
``[snapdriver] strategies = NAME``):

1. ``openstack server image create --wait`` (the real client);
2. ``openstack image save``, and the image checked: the writer's blocks
   1..N, nothing torn, N at least what the guest had reported before;
3. a clone booted from the snapshot (``openstack server create``), whose
   own kernel reads its root disk (qemu-ga ``guest-exec``): exactly the
   blocks 1..N;

then prints a table and removes everything.
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

from snapdriver.box import client as box_client
from snapdriver.box import services
from snapdriver.cmd import common
from snapdriver import strategies as snap_strategies
from snapdriver.tests.functional import writer_guest


class Row(object):

    def __init__(self, label, strategies):
        self.label = label
        self.strategies = strategies
        self.used = None
        self.steps = {}
        self.blocks = None
        self.size = None
        self.read_back = False
        self.skipped = None
        self.error = None


class Demo(object):

    def __init__(self, box_dir, out, strategies=None, keep=False):
        self.box = services.Box(box_dir, say=self.say)
        self.out = out
        self.only = strategies
        self.keep = keep
        self.rows = []
        self.t0 = time.monotonic()
        self.client = None
        self.failed = False
        self.source = None
        self.workdir = None

    def say(self, line):
        self.out.write('[%6.1f s] %s\n' % (time.monotonic() - self.t0, line))
        self.out.flush()

    def timed(self, row, step, fn, *args, **kwargs):
        t0 = time.monotonic()
        result = fn(*args, **kwargs)
        row.steps[step] = time.monotonic() - t0
        self.say('  %-18s %6.1f s' % (step, row.steps[step]))
        return result

    # -- the story -----------------------------------------------------

    def run(self):
        self.say('starting the box in %s (Keystone, RabbitMQ, placement, '
                 'Glance, Nova; Neutron stand-in)' % self.box.dir)
        seconds = self.box.start()
        self.say('box up in %.1f s; a second shell can use it:' % seconds)
        self.say('  export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=%s' % (
            self.box.clouds_yaml, services.CLOUD_NAME))
        self.client = box_client.BoxClient(self.box)
        self.workdir = tempfile.mkdtemp(prefix='demo-', dir=self.box.dir)
        self.say('booting the writer guest: openstack server create '
                 '--image snapbox-writer --nic none --wait demo-source')
        t0 = time.monotonic()
        self.source = self.client.boot('demo-source')
        self.client.wait_for_seq(self.source, 1)
        self.say('source %s ACTIVE, writer running (%.1f s, virt_type %s)'
                 % (self.source['id'], time.monotonic() - t0,
                    self.box.state['virt_type']))
        plan = self.plan()
        self.say('which strategies apply to it: snapdriver plan %s '
                 '--strategy NAME' % self.client.domain_name(self.source))
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            verdicts = dict(zip(
                [n[0] for _, n in plan if n],
                pool.map(self.applies, [n[0] for _, n in plan if n])))
        for label, names in plan:
            row = Row(label, names)
            if names and verdicts[names[0]]:
                row.skipped = verdicts[names[0]]
            self.rows.append(row)
            try:
                self.one(row)
            except (box_client.ClientError, AssertionError,
                    services.BoxError, subprocess.SubprocessError) as e:
                self.failed = True
                row.error = str(e)
                self.say('  FAILED: %s' % e)

    def plan(self):
        installed = snap_strategies.available_names()
        wanted = self.only or installed
        rows = [('default order', None)] if not self.only else []
        rows += [(name, [name]) for name in wanted]
        return rows

    def applies(self, name):
        """Ask ``snapdriver plan`` whether a strategy applies here."""
        cmd = [sys.executable, '-m', 'snapdriver.cmd.cli', '--config-file',
               self.box.path('etc', 'nova-cpu.conf'), 'plan',
               self.client.domain_name(self.source), '--strategy', name]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              universal_newlines=True)
        if proc.returncode == 0:
            return None
        for line in proc.stdout.splitlines():
            if 'skipped:' in line:
                reason = line.split('skipped:', 1)[1].strip()
                # NOTE: the command cannot run a strategy that calls
                # Nova's own driver code (stock); nova-compute can.
                if 'only inside nova-compute' in reason:
                    return None
                return reason
        return proc.stdout.strip().splitlines()[-1]

    def one(self, row):
        self.say('%s:' % row.label)
        if row.skipped:
            self.say('  does not apply: %s' % row.skipped)
            return
        if row.strategies != self.box.state.get('strategies'):
            self.timed(row, 'restart compute', self.box.restart_compute,
                       row.strategies)
        before = self.client.wait_for_seq(
            self.source, self.client.console_seq(self.source) + 10)
        name = 'demo-%s' % (row.strategies[0] if row.strategies
                            else 'default')
        self.say('  $ openstack server image create --wait --name %s '
                 'demo-source' % name)
        image = self.timed(row, 'image create', self.client.image_create,
                           self.source['id'], name)
        server = self.client.server(self.source['id'])
        if server['status'] != 'ACTIVE' or server.get(
                'OS-EXT-STS:task_state'):
            raise AssertionError('source is %s/%s after the snapshot' % (
                server['status'], server.get('OS-EXT-STS:task_state')))
        row.used = self.client.strategy_used(self.source['id'])
        path = os.path.join(self.workdir, image['id'])
        self.timed(row, 'image save', self.client.image_save, image['id'],
                   path)
        row.size = os.path.getsize(path)
        n, run_id = self.timed(row, 'verify image', writer_guest.scan_image,
                               path, image['disk_format'])
        os.unlink(path)
        if n < before:
            raise AssertionError('the image holds %d blocks, the guest had '
                                 'reported %d before the snapshot' % (
                                     n, before))
        row.blocks = n
        self.say('  image %s: writer blocks 1..%d, a valid prefix (guest '
                 'had reported %d)' % (image['id'], n, before))
        self.client.make_reader(image['id'])
        clone = self.timed(row, 'clone boot', self.client.boot,
                           'clone-%s' % name[len('demo-'):], image['id'])
        row.read_back = self.timed(row, 'read back', self.client.read_back,
                                   clone, n, run_id)
        self.say('  clone %s read its disk: blocks 1..%d as written, then '
                 'empty' % (clone['id'], n))
        self.client.delete_server(clone['id'], wait=False)

    def table(self):
        head = ('run', 'strategy used', 'image create', 'image', 'blocks',
                'clone boot', 'read back', 'data read back from the clone')
        rows = []
        for r in self.rows:
            if r.skipped:
                rows.append((r.label, '-', '-', '-', '-', '-', '-',
                             'n/a: %s' % r.skipped[:60]))
                continue
            rows.append((
                r.label, r.used or '?',
                '%.1f s' % r.steps['image create']
                if 'image create' in r.steps else '-',
                common.human_size(r.size) if r.size else '-',
                str(r.blocks or '-'),
                '%.1f s' % r.steps['clone boot']
                if 'clone boot' in r.steps else '-',
                '%.1f s' % r.steps['read back']
                if 'read back' in r.steps else '-',
                'yes' if r.read_back else 'NO: %s' % (r.error or '?')[:80]))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        fmt = '  '.join('%%-%ds' % w for w in widths)
        lines = [fmt % head, fmt % tuple('-' * w for w in widths)]
        lines += [fmt % row for row in rows]
        return '\n'.join(lines)

    def stop(self):
        if self.keep:
            self.say('--keep: the box stays up; "snapdriver box stop '
                     '--box-dir %s" removes it' % self.box.dir)
            return
        self.say('stopping the box: servers, domains, daemons, files')
        t0 = time.monotonic()
        if self.failed:
            self.box.save_logs()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.box.stop()
        self.say('removed in %.1f s' % (time.monotonic() - t0))


def run(args, out):
    reason = services.unavailable_reason()
    if reason:
        raise common.CliError(reason)
    if args.strategies:
        unknown = set(args.strategies) - set(
            snap_strategies.available_names())
        if unknown:
            raise common.CliError('unknown strategies %s; installed: %s' % (
                ', '.join(sorted(unknown)),
                ', '.join(snap_strategies.available_names())),
                common.EXIT_USAGE)
    demo = Demo(args.box_dir, out, args.strategies, keep=args.keep)
    try:
        demo.run()
    except BaseException as e:
        demo.failed = True
        if isinstance(e, services.BoxError):
            out.write('\nbox error: %s\n' % e)
        elif not (common.interrupted() or isinstance(e, KeyboardInterrupt)):
            demo.say('error: %s' % e)
            raise
        else:
            demo.say('interrupted: cleaning up')
    finally:
        demo.stop()
    out.write('\n%s\n' % demo.table())
    ran = [r for r in demo.rows if not r.skipped]
    ok = [r for r in ran if r.read_back]
    out.write('\n%d runs, %d read back from the clone, %d failed, %d not '
              'applicable; %.0f s in all\n' % (
                  len(ran), len(ok), len(ran) - len(ok),
                  len(demo.rows) - len(ran), time.monotonic() - demo.t0))
    return common.EXIT_OK if ran and len(ok) == len(ran) else \
        common.EXIT_FAILED
