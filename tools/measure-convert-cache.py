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

"""By hand: a snapshot's convert, and the upload's read, per cache mode.

``[snapdriver] convert_cache_mode`` picks the ``-t`` of every convert a
snapshot runs (``unsafe`` by default; the stock driver's is ``none``).
Issue 12 left open whether ``none`` should take over for large images,
whose dirty data passes the kernel's dirty limit. A Nova-shaped disk (raw
``_base`` + qcow2 overlay), its files evicted from the page cache before
each convert; per repetition and cache mode: ``qemu-img convert -U -t MODE
[-W] -f qcow2 -O qcow2`` timed, then the output read once front to back
(what the upload to Glance does next), timed. Run as root from a
checkout::

    PYTHONPATH=. .tox/functional/bin/python tools/measure-convert-cache.py \\
        --size-gib 8 --fill 0.75 --repeat 2
"""

import argparse
import os
import subprocess
import time

from oslo_utils import units

from snapdriver import bench
from snapdriver.tests.functional import fixtures as real

MODES = (
    ('unsafe', ['-W']),   # snapdriver's default
    ('none', ['-W']),
    ('none', []),         # the stock driver's
    ('writeback', ['-W']),
)


def timed(fn, *args):
    t0 = time.monotonic()
    fn(*args)
    return time.monotonic() - t0


def convert(args):
    subprocess.run(args, check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)


def read(path):
    with open(path, 'rb', buffering=0) as f:
        while f.read(16 * units.Mi):
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-gib', type=int, default=2)
    parser.add_argument('--fill', type=float, default=0.75)
    parser.add_argument('--repeat', type=int, default=2)
    args = parser.parse_args()
    size = args.size_gib * units.Gi
    images = real.DiskImages(virtual_size=size,
                             data_size=int(size * args.fill),
                             nova_layout=True, seed=7)
    images.setUp()
    try:
        out = os.path.join(images.workdir, 'out.qcow2')
        for rep in range(args.repeat):
            for mode, extra in MODES:
                bench.evict([images.instances_dir])
                took = timed(convert, ['qemu-img', 'convert', '-U', '-t',
                                       mode] + extra +
                             ['-f', 'qcow2', '-O', 'qcow2', '--',
                              images.overlay_path, out])
                readback = timed(read, out)
                os.unlink(out)
                os.sync()
                print('%d GiB %g rep %d  -t %-9s %-3s  convert %6.2f s  '
                      'read back %6.2f s  sum %6.2f s' % (
                          args.size_gib, args.fill, rep, mode,
                          ' '.join(extra), took, readback, took + readback),
                      flush=True)
    finally:
        images.cleanUp()


if __name__ == '__main__':
    main()
