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

"""By hand: the temporary external overlay route of issue 12, timed.

A 2 GiB Nova-shaped disk (raw ``_base`` + qcow2 overlay, cache none, io
native), 1 GiB of data, a running domain (no OS: no guest writes), the
disk's files evicted from the page cache before each step: a bare
``qemu-img convert -U -t unsafe -W`` (what our converts run), Nova's
``-t none`` convert, and the route: ``virsh snapshot-create-as
--disk-only --no-metadata`` onto a temporary overlay, ``qemu-img
convert`` of the now read-only disk (no ``-U``), ``virsh blockcommit
--active --pivot``. Prints seconds per repetition. Not a strategy: see
doc/benchmarks.md. Run as root from a checkout::

    PYTHONPATH=. .tox/functional/bin/python tools/measure-overlay-route.py
"""

import os
import subprocess
import time

from oslo_utils import units

from snapdriver import bench
from snapdriver.tests.functional import fixtures as real

REPEAT = 3


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)


def virsh(*args):
    sh('virsh', '-c', real.LIBVIRT_URI, *args)


def timed(results, label, fn, *args):
    t0 = time.monotonic()
    fn(*args)
    results.setdefault(label, []).append(time.monotonic() - t0)


def convert(cache, disk, out, *extra):
    sh('qemu-img', 'convert', *extra, '-t', cache, '-f', 'qcow2', '-O',
       'qcow2', disk, out)


def measure(dom, images, results):
    disk = dom.disk_path
    out = os.path.join(images.workdir, 'out.qcow2')
    overlay = os.path.join(images.workdir, 'tmp-overlay.qcow2')
    for _rep in range(REPEAT):
        bench.evict([images.instances_dir])
        timed(results, 'bare convert -U -t unsafe -W', convert, 'unsafe',
              disk, out, '-U', '-W')
        os.unlink(out)
        bench.evict([images.instances_dir])
        timed(results, 'bare convert -U -t none (Nova)', convert, 'none',
              disk, out, '-U')
        os.unlink(out)
        bench.evict([images.instances_dir])
        t0 = time.monotonic()
        timed(results, 'route: snapshot-create --disk-only', virsh,
              'snapshot-create-as', dom.name, '--disk-only', '--no-metadata',
              '--atomic', '--diskspec', 'vda,file=%s' % overlay)
        timed(results, 'route: convert -t unsafe -W (no -U)', convert,
              'unsafe', disk, out, '-W')
        timed(results, 'route: blockcommit --active --pivot', virsh,
              'blockcommit', dom.name, 'vda', '--active', '--pivot',
              '--wait')
        results.setdefault('route: total', []).append(time.monotonic() - t0)
        inactive = subprocess.run(
            ['virsh', '-c', real.LIBVIRT_URI, 'dumpxml', '--inactive',
             dom.name], capture_output=True, text=True, check=True).stdout
        results.setdefault('route: definition names the overlay after',
                           []).append(overlay in inactive)
        results.setdefault('route: image equals the disk', []).append(
            real.images_equal(out, 'qcow2', images.reference_path, 'raw'))
        os.unlink(out)
        os.unlink(overlay)


def main():
    images = real.DiskImages(virtual_size=2 * units.Gi,
                             data_size=1 * units.Gi, nova_layout=True,
                             seed=5)
    images.setUp()
    results = {}
    try:
        dom = real.RealDomain(images=images, start_state='running',
                              disk_cache='none', disk_io='native')
        dom.setUp()
        try:
            measure(dom, images, results)
        finally:
            dom.cleanUp()
    finally:
        images.cleanUp()
    for label, values in results.items():
        print('%-45s %s' % (label, ' '.join(
            '%.2f' % v if isinstance(v, float) else str(v) for v in values)))


if __name__ == '__main__':
    main()
