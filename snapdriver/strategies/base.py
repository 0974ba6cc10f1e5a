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

"""The interface every snapshot strategy implements.

A strategy knows a mechanism (qemu-img, a libvirt block job); it does not
know Nova's compute manager. :mod:`snapdriver.runner` runs it: it checks
that the strategy applies, checks free space before the guest is touched,
brings the guest to the state the strategy needs (see
:mod:`snapdriver.guest_state`), calls :meth:`SnapshotStrategy.capture` and
always restores the guest.

A third party adds a strategy by subclassing :class:`SnapshotStrategy` and
registering the class in its own ``setup.cfg``::

    [entry_points]
    snapdriver.snapshot_strategies =
        my-strategy = my_package.module:MyStrategy

and listing ``my-strategy`` in ``[snapdriver] strategies``.
"""

import abc

#: The guest keeps running (or stays paused) during :meth:`capture`.
GUEST_LIVE = 'live'
#: Nothing writes the disk during :meth:`capture`: a running or paused guest
#: is managed-saved first and restored after; a shut-off guest stays off.
GUEST_QUIET = 'quiet'


class SnapshotStrategy(metaclass=abc.ABCMeta):
    """One way of turning a guest's root disk into an image file."""

    #: The entry point name; set by the registry when it loads the class.
    name = None

    #: One line for ``snapdriver strategies`` and the docs.
    description = ''

    #: :data:`GUEST_LIVE` or :data:`GUEST_QUIET`.
    guest_state = GUEST_QUIET

    #: True for strategies that hand the whole snapshot to the inherited
    #: ``LibvirtDriver.snapshot()`` instead of implementing :meth:`capture`.
    delegates_to_driver = False

    #: True for strategies that open the disk file with qemu-img, which
    #: follows the backing file its header names: the runner then checks
    #: that header against the chain libvirt opened for QEMU. A strategy
    #: that only copies through QEMU (a backup job) sets it to False and
    #: spares a running guest's snapshot that ``qemu-img info``.
    reads_disk_file = True

    @abc.abstractmethod
    def unsupported_reason(self, request):
        """Say why this strategy cannot snapshot ``request``.

        Called before anything touches the guest; must not change anything.

        :param request: a :class:`snapdriver.request.SnapshotRequest`.
        :returns: ``None`` when the strategy applies, else a short reason
            an operator can read ("the guest is shut off").
        """

    def space_needed(self, request):
        """Return the bytes of temporary space the snapshot needs.

        Checked against the free space of the work directory's filesystem
        before the guest is touched. The default is the size of the output
        image as ``qemu-img measure`` reports it.
        """
        from snapdriver import qemu_img
        return qemu_img.measure(request.disk_path, request.source_format,
                                request.image_format)

    def space_bound(self, request):
        """Return an upper bound of :meth:`space_needed`, or ``None``.

        Computed without running a process: when it fits in the free
        space, the exact need is not measured before the snapshot starts
        (a ``qemu-img measure`` is 10-25 ms of the time before the copy).
        The default is ``None``: always measure.
        """
        return None

    def clean_leftovers(self, request):
        """Remove what an earlier, killed run of this strategy left behind.

        Called before each capture, with the per-instance lock held, and
        before the guest is touched. The default does nothing.

        :returns: a list of human-readable descriptions of what was
            removed, for the log.
        """
        return []

    @abc.abstractmethod
    def capture(self, request, out_path, run):
        """Write the guest's root disk, as an image, to ``out_path``.

        Called with the guest in :attr:`guest_state`.

        :param request: a :class:`snapdriver.request.SnapshotRequest`.
        :param out_path: the file to create, in ``request.image_format``,
            inside a private work directory that is removed afterwards.
        :param run: a :class:`snapdriver.runner.SnapshotRun`, to record
            phase timings and to report progress.
        """
