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

"""By hand: push backup jobs onto targets made with other qemu-img options.

Issue 12 asks whether a tuned push target (options, cluster size) closes
the gap between ``live-backup`` and the fastest bare convert. A
Nova-shaped disk (raw ``_base`` + qcow2 overlay, ``cache='none'
io='native'``) of a running domain with no OS; per repetition, with the
disk's files evicted from the page cache before each: bare ``qemu-img
convert -U -t unsafe -W`` and ``-t none``, then a push-mode backup job
(``virDomainBackupBegin``, ``REUSE_EXTERNAL``) onto a target made by
``qemu-img create -f qcow2`` with each option set, timed from the call
until the job is gone. Prints seconds and the output's allocation. Run as
root from a checkout::

    PYTHONPATH=. .tox/functional/bin/python tools/measure-push-targets.py \\
        --size-gib 4 --fill 0.75 --repeat 3
"""

import argparse
import os
import statistics
import subprocess
import time

import libvirt
from oslo_utils import units

from snapdriver import bench
from snapdriver.strategies import live_backup
from snapdriver.tests.functional import fixtures as real

TARGETS = (
    ('push, qemu-img create defaults (live-backup)', []),
    ('push, lazy_refcounts=on', ['-o', 'lazy_refcounts=on']),
    ('push, cluster_size=256K', ['-o', 'cluster_size=256K']),
    ('push, cluster_size=1M', ['-o', 'cluster_size=1M']),
    ('push, cluster_size=2M', ['-o', 'cluster_size=2M']),
)
BARE = (
    ('bare convert -U -t unsafe -W', ['-t', 'unsafe', '-W']),
    ('bare convert -U -t none (Nova)', ['-t', 'none']),
)


def timed(cmd):
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    return time.monotonic() - t0


def push(dom, out, size, options):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2'] + options +
                   ['--', out, str(size)], check=True)
    xml = live_backup.backup_xml('vda', out, ['vda'])
    t0 = time.monotonic()
    dom.backupBegin(xml, None, libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
    while dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        time.sleep(0.003)
    return time.monotonic() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-gib', type=int, default=2)
    parser.add_argument('--fill', type=float, default=0.25)
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    size = args.size_gib * units.Gi
    images = real.DiskImages(virtual_size=size,
                             data_size=int(size * args.fill),
                             nova_layout=True, seed=7)
    images.setUp()
    results = {}
    try:
        domain = real.RealDomain(images=images, start_state='running',
                                 disk_cache='none', disk_io='native')
        domain.setUp()
        try:
            dom = libvirt.open(real.LIBVIRT_URI).lookupByName(domain.name)
            out = os.path.join(images.workdir, 'out.qcow2')
            for rep in range(args.repeat):
                for label, extra in BARE + TARGETS:
                    bench.evict([images.instances_dir])
                    if label.startswith('bare'):
                        seconds = timed(
                            ['qemu-img', 'convert', '-U'] + extra +
                            ['-f', 'qcow2', '-O', 'qcow2', '--',
                             domain.disk_path, out])
                    else:
                        seconds = push(dom, out, size, extra)
                    mib = os.stat(out).st_blocks * 512 // units.Mi
                    os.unlink(out)
                    os.sync()
                    results.setdefault(label, []).append(seconds)
                    print('rep %d  %-46s %6.3f s  %d MiB' % (
                        rep, label, seconds, mib), flush=True)
        finally:
            domain.cleanUp()
    finally:
        images.cleanUp()
    print('%d GiB, %g fill, medians of %d:' % (args.size_gib, args.fill,
                                               args.repeat))
    for label, values in results.items():
        print('  %-46s %6.3f s' % (label, statistics.median(values)))


if __name__ == '__main__':
    main()
