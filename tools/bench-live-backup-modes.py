#!/usr/bin/env python3
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

"""live-backup push vs pull vs a bare convert, on one Nova-shaped disk.

A raw base plus a qcow2 overlay (data in both), attached with cache='none'
io='native' as Nova attaches file disks, to a running BIOS-only domain.
Each repeat runs, with a cold page cache before each: the fastest bare
convert of the running disk (``qemu-img convert -U -t writeback -W -O
qcow2``), then one live-backup snapshot per mode through the runner (the
time of ``runner.captured``, which is the snapshot minus the upload). The
order rotates between repeats. Run as root on a host prepared by
tools/setup-host.sh::

    python3 tools/bench-live-backup-modes.py --size-gib 2 --data-mib 512
"""

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

import libvirt
from nova.virt.libvirt import guest as libvirt_guest
from oslo_utils import units

from snapdriver import conf
from snapdriver import guest_state
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver.strategies import live_backup

DOMAIN_XML = """<domain type='%(type)s'>
  <name>%(name)s</name><uuid>%(uuid)s</uuid>
  <memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>"""


def sh(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True).stdout


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def make_disk(diskdir, size, data):
    """Half the data in the raw base, half in the overlay, 4 MiB extents."""
    base = os.path.join(diskdir, 'base.raw')
    disk = os.path.join(diskdir, 'disk.qcow2')
    sh('qemu-img', 'create', '-q', '-f', 'raw', base, str(size))
    extent = 4 * units.Mi
    slots = size // extent
    count = data // extent
    # Spread over the disk: every other slot, base and overlay alternating.
    step = max(1, slots // count)
    offsets = [i * step * extent for i in range(count)]
    with open(base, 'r+b') as f:
        for off in offsets[0::2]:
            f.seek(off)
            f.write(os.urandom(extent))
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base,
       disk)
    cmds = []
    for n, off in enumerate(offsets[1::2]):
        cmds += ['-c', 'write -P %d %d %d' % (n % 250 + 1, off, extent)]
    sh('qemu-io', '-f', 'qcow2', *cmds, disk)
    return disk


def disk_size(path, fmt='qcow2'):
    return json.loads(sh('qemu-img', 'info', '-U', '--output=json', '-f',
                         fmt, path))['actual-size']


def qemu_cpu(pid):
    """CPU seconds (user + system) the QEMU process ``pid`` used so far."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def cpu_now(pid):
    """CPU seconds of QEMU, of this process and of its finished children.

    Elapsed time on a shared, loaded host says little; the CPU a route
    burns says what it costs and how it will fare under contention.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (qemu_cpu(pid) + me.ru_utime + me.ru_stime + kids.ru_utime +
            kids.ru_stime)


def bare_convert(disk, out):
    drop_caches()
    t0 = time.monotonic()
    sh('qemu-img', 'convert', '-U', '-f', 'qcow2', '-t', 'writeback', '-W',
       '-O', 'qcow2', disk, out)
    return time.monotonic() - t0, {}, disk_size(out)


def snapshot(guest, mode, keep, image_format):
    conf.CONF.set_override('live_backup_mode', mode, group='snapdriver')
    request = snap_request.build(guest, image_format=image_format)
    strategy = live_backup.LiveBackup()
    strategy.name = 'live-backup'
    drop_caches()
    t0 = time.monotonic()
    power = guest_state.LibvirtPowerControl(guest)
    with runner.captured(request, strategy, power) as (out, run):
        elapsed = time.monotonic() - t0
        size = disk_size(out, image_format)
        shutil.copy(out, keep)
    return elapsed, dict(run.timings), size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-gib', type=float, default=2)
    parser.add_argument('--data-mib', type=int, default=512)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--parent', default='/var/lib/libvirt/images')
    parser.add_argument('--type', default='kvm', choices=('kvm', 'qemu'))
    parser.add_argument('--image-format', default='qcow2',
                        choices=('qcow2', 'raw'),
                        help='output of the snapshots (the bare convert '
                             'writes qcow2 in every case)')
    args = parser.parse_args()

    conf.CONF([], project='nova')
    rundir = tempfile.mkdtemp(prefix='snapdriver-bench-modes-',
                              dir=args.parent)
    os.chmod(rundir, 0o711)
    snapdir = os.path.join(rundir, 'snapshots')
    os.mkdir(snapdir, 0o711)
    conf.CONF.set_override('snapshots_directory', snapdir, group='libvirt')
    conn = libvirt.open('qemu:///system')
    uuid = str(uuidlib.uuid4())
    results = {'bare': [], 'push': [], 'pull': []}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, rundir, ignore_errors=True)
        disk = make_disk(rundir, int(args.size_gib * units.Gi),
                         args.data_mib * units.Mi)
        dom = conn.createXML(DOMAIN_XML % {
            'type': args.type, 'name': 'snapdriver-bench-modes-%s' % uuid,
            'uuid': uuid, 'disk': disk}, 0)
        stack.callback(dom.destroy)
        guest = libvirt_guest.Guest(dom)
        pid = live_backup.qemu_pid(uuid)
        reference = os.path.join(rundir, 'reference.qcow2')
        sh('qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', disk,
           reference)
        routes = ['bare', 'push', 'pull']
        for rep in range(args.repeat):
            for route in routes[rep % 3:] + routes[:rep % 3]:
                fmt = 'qcow2' if route == 'bare' else args.image_format
                keep = os.path.join(rundir, '%s-%d.%s' % (route, rep, fmt))
                cpu0 = cpu_now(pid)
                if route == 'bare':
                    r = bare_convert(disk, keep)
                else:
                    r = snapshot(guest, route, keep, args.image_format)
                r += (cpu_now(pid) - cpu0, os.getloadavg()[0])
                results[route].append(r)
                print('%-4s rep %d: %.3f s  cpu %.2f s  load %.1f  phases %s  '
                      'output %d MiB' % (
                          route, rep, r[0], r[3], r[4],
                          {k: round(v, 3) for k, v in r[1].items()},
                          r[2] // units.Mi), flush=True)
                # Every image holds the disk's content (the BIOS-only
                # guest never writes).
                sh('qemu-img', 'compare', '-f', fmt, '-F', 'qcow2', keep,
                   reference)
                os.unlink(keep)
    bare = statistics.median(r[0] for r in results['bare'])
    for route, rs in results.items():
        times = [r[0] for r in rs]
        print('%-4s median %.3f s (min %.3f, max %.3f) = %.2fx bare; '
              'cpu median %.2f s; output %d MiB' % (
                  route, statistics.median(times), min(times), max(times),
                  statistics.median(times) / bare,
                  statistics.median(r[3] for r in rs), rs[0][2] // units.Mi))
    # Paired, repeat by repeat: the load of a shared host changes slowly,
    # so ratios within one repeat are steadier than ratios of medians.
    for route in ('push', 'pull'):
        pairs = zip(results[route], results['bare'])
        ratios = [r[0] / b[0] for r, b in pairs]
        print('%s / bare, paired by repeat: median %.2fx (%s)' % (
            route, statistics.median(ratios),
            ', '.join('%.2f' % x for x in ratios)))
    ratios = [a[0] / b[0] for a, b in zip(results['pull'], results['push'])]
    print('pull / push, paired by repeat: median %.2fx (%s)' % (
        statistics.median(ratios), ', '.join('%.2f' % x for x in ratios)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
