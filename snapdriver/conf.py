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

"""Configuration options of the ``[snapdriver]`` group.

The options are registered on Nova's global ``CONF`` object on import, so
they are read from the same ``nova.conf`` as the rest of nova-compute.
"""

from oslo_config import cfg

import nova.conf

CONF = nova.conf.CONF

DEFAULT_STRATEGIES = ['live-backup', 'live-shallow-rebase',
                      'cold-direct-extract', 'stock']

snapdriver_group = cfg.OptGroup(
    'snapdriver',
    title='Snapshot strategy options',
    help="""
Options for the snapdriver compute driver
(``compute_driver = snapdriver.LibvirtSnapshotDriver``), which replaces the
libvirt driver's ``snapshot()`` (``nova image-create``, ``createBackup``,
shelve) with a registry of snapshot strategies.
""")

snapdriver_opts = [
    cfg.ListOpt(
        'strategies',
        default=DEFAULT_STRATEGIES,
        help="""
Ordered list of snapshot strategies to try.

For each snapshot, the first strategy in this list that applies to the
instance (its power state, disk backend and format, hypervisor support and
Nova's own settings such as ``[workarounds] disable_libvirt_livesnapshot``)
is used. The reasons each earlier strategy was skipped are logged. If none
applies, the snapshot fails before the guest is touched.

A list without any cold strategy means "never stop my guests": an instance
that cannot be snapshotted live then fails to snapshot instead of being
stopped.

This is also the set of strategies a flavor (extra spec
``snapdriver:strategies``) or an image (property ``snapdriver_strategies``)
may choose from: they can narrow it for their instances, the flavor can
reorder it, neither can add to it.

Possible values:

* ``live-backup``: no guest downtime; a libvirt push-mode backup job writes
  a point-in-time copy of the root disk straight into the image, in one
  pass, with no overlay and no change to the domain definition (libvirt
  7.2 and QEMU 4.2 or later).
* ``live-shallow-rebase``: no guest downtime; mirrors the root disk onto a
  qcow2 overlay with a transient block copy job (the domain stays
  persistent), then flattens the overlay.
* ``cold-direct-extract``: managed-saves a running or paused guest, converts
  the disk directly, restores the guest.
* ``cold-internal``: managed-saves a running or paused guest, takes a qcow2
  internal snapshot, restores the guest, then extracts and deletes the
  snapshot while the guest runs (qcow2 disks only). The image is the disk at
  the managed save, as with ``cold-direct-extract``, but the guest is down
  only for the save, the snapshot's creation and the restore, not for the
  copy; list it before ``cold-direct-extract`` for the shortest cold
  downtime. (With less free space beside the disk than the disk file's
  allocated size, the guest stays saved until the extract is done.)
* ``stock``: the inherited libvirt driver's ``snapshot()``; covers backends
  the other strategies do not (RBD, LVM, ploop).
* Any name registered by a third-party package in the
  ``snapdriver.snapshot_strategies`` entry point namespace.

Unknown names stop nova-compute at start with an error that lists the
installed strategies.

Related options:

* ``[libvirt] snapshot_image_format``, ``[libvirt] snapshot_compression``,
  ``[libvirt] snapshots_directory``: honoured by every strategy.
"""),
    cfg.IntOpt(
        'qemu_img_timeout',
        default=3600,
        min=1,
        help="""
Maximum time in seconds for one ``qemu-img`` command that copies data
(``convert``, internal snapshot create/delete).

A command still running after this time is killed, the guest is restored
to the power state it had and the snapshot fails with an error naming this
option.

Possible values:

* A positive number of seconds. Size it for the largest root disk on the
  host: about the time a ``qemu-img convert`` of that disk takes, times 3.

Related options:

* ``block_job_timeout``
"""),
    cfg.IntOpt(
        'block_job_timeout',
        default=3600,
        min=1,
        help="""
Maximum time in seconds that a live strategy waits for its libvirt job: the
block copy of ``live-shallow-rebase`` to reach the ready state, the backup
job of ``live-backup`` to complete.

On timeout the job is aborted, the guest keeps running untouched and the
snapshot fails with an error naming this option.

Possible values:

* A positive number of seconds.

Related options:

* ``qemu_img_timeout``
"""),
    cfg.FloatOpt(
        'block_job_poll_interval',
        default=0.1,
        min=0.01,
        max=10,
        help="""
Seconds between two checks of a libvirt block job's progress.

Shorter intervals end a live snapshot sooner after the copy is in sync;
Nova's own live snapshot polls every 0.5 seconds.

Possible values:

* A number of seconds between 0.01 and 10.
"""),
    cfg.StrOpt(
        'live_flatten',
        default='auto',
        choices=[
            ('auto', 'convert when the filesystem holds the overlay and the '
                     'image at once (plus the margin), else in place'),
            ('convert', 'always convert the overlay into a new image file, '
                        'as the stock driver does: fastest, but the host '
                        'holds the overlay and the image together'),
            ('in-place', 'always turn the overlay itself into the image '
                         '(qemu-img rebase onto nothing): the host never '
                         'holds two copies, but it reads the whole virtual '
                         'disk and takes several times longer'),
        ],
        help="""
How ``live-shallow-rebase`` turns its overlay into a standalone image.

Only matters for an uncompressed qcow2 output; raw or compressed outputs
are always converted.

Related options:

* ``free_space_margin_mb``
* ``[libvirt] snapshot_image_format``, ``[libvirt] snapshot_compression``
"""),
    cfg.StrOpt(
        'compression_type',
        default='zlib',
        choices=[
            ('zlib', 'the qcow2 default and the stock driver\'s: every QEMU '
                     'reads it'),
            ('zstd', 'several times faster to write and to read, images '
                     'slightly smaller; needs QEMU 5.1 or later (and qcow2 '
                     'version 3) wherever the image is used'),
        ],
        help="""
Compression of a compressed qcow2 snapshot (``[libvirt]
snapshot_compression = True``).

Every strategy writes the compressed image in one pass, with clusters
compressed in parallel (qemu-img ``-W``); this option picks the algorithm
(``-o compression_type``). Choose ``zstd`` only when every host that will
boot the image, and every tool that reads it, has QEMU 5.1 or later.

Related options:

* ``[libvirt] snapshot_compression``, ``[libvirt] snapshot_image_format``
"""),
    cfg.StrOpt(
        'convert_cache_mode',
        default='unsafe',
        choices=[
            ('unsafe', 'the page cache, no flush: qemu-img convert\'s own '
                       'default and the fastest for an image that is read '
                       'back at once and deleted'),
            ('writeback', 'the page cache, flushed at the end'),
            ('none', 'direct I/O (O_DIRECT), as the stock driver converts: '
                     'the copy does not fill the host page cache, but the '
                     'upload then reads the image back from the disk; '
                     'writeback where the filesystem has no direct I/O'),
        ],
        help="""
Cache mode of the output of every ``qemu-img convert`` a snapshot runs
(``qemu-img convert -t``).

The output is a temporary file in ``[libvirt] snapshots_directory`` that
is checked and uploaded right after it is written, then deleted: a host
crash fails the snapshot anyway, so flushes buy nothing, and an output in
the page cache is read back without touching the disk. ``none`` is the
stock driver's choice: it leaves the host page cache to other users.

Measured here (a 512 MiB image of random data converted to qcow2 on ext4,
median of 5): ``unsafe`` 0.54 s to write, 0.09 s to read back;
``writeback`` 0.69 s and 0.13 s; ``none`` 0.45 s and 0.93 s.

Related options:

* ``[libvirt] snapshots_directory``
* ``[compute] max_concurrent_disk_ops`` (Nova's limit, held for every copy)
"""),
    cfg.StrOpt(
        'live_backup_mode',
        default='push',
        choices=[
            ('push', 'a push-mode backup job has QEMU write the copy into '
                     'a qcow2 target; a raw or compressed image then takes '
                     'a second conversion'),
            ('pull', 'a pull-mode backup job exports the disk as it was at '
                     'the job start over NBD, on a unix socket in the '
                     'snapshot\'s work directory, and qemu-img reads it '
                     'straight into the image in the requested format; '
                     'QEMU only writes, into a scratch file, the old data '
                     'of the blocks the guest rewrites during the copy'),
        ],
        help="""
How the ``live-backup`` strategy copies the running disk.

Both modes give the same image: the disk as it was when the backup job
started, with the guest running throughout and the domain definition never
changed, and both reserve the space of the file QEMU writes during the job
before it starts. ``push`` needs the least space: the target is the image
(one image in all, for a plain qcow2 output). ``pull`` writes any output
format in one pass and its output holds exactly the data, and on a host
with idle CPU it copied 1.2-1.9x faster than ``push`` (within 0.85-1.13x of
a bare ``qemu-img convert`` of the same disk, where ``push`` took
1.20-1.74x); but its scratch file's reservation comes on top of the image,
so it holds up to two images' worth of space during the job (more than the
stock driver's 1.6), it takes more CPU (qemu-img and QEMU both move the
data), and on a host whose CPUs were oversubscribed it was the slower of
the two (see the strategies documentation). Hence the default. ``pull``
also needs the snapshot's process to connect to a socket that QEMU
creates: root, or a member of the group of the disk (the QEMU user's group
under libvirt's dynamic ownership); otherwise ``push`` is used.

Possible values:

* ``push`` (default), ``pull``.

Related options:

* ``[snapdriver] strategies``: ``live-backup``
* ``[snapdriver] block_job_timeout``: also bounds a ``pull`` copy
"""),
    cfg.IntOpt(
        'free_space_margin_mb',
        default=256,
        min=0,
        help="""
Space in MiB that must stay free in ``[libvirt] snapshots_directory`` after
a snapshot's temporary files are written.

Before the guest is touched, each strategy estimates the space it needs
(``qemu-img measure`` of the output, plus any overlay) and the snapshot
fails at once, with no downtime, if the free space minus this margin is
smaller.

Possible values:

* ``0`` or a positive number of MiB.

Related options:

* ``[libvirt] snapshots_directory``
"""),
]


def register_opts(conf):
    conf.register_group(snapdriver_group)
    conf.register_opts(snapdriver_opts, group=snapdriver_group)


register_opts(CONF)


def list_opts():
    """Return the options of snapdriver for oslo-config-generator.

    Used through the ``oslo.config.opts`` entry point named ``snapdriver``.

    :returns: a list of ``(group, [options])`` tuples.
    """
    return [(snapdriver_group, snapdriver_opts)]
