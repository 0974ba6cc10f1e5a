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

"""Errors raised by snapdriver, as Nova exception types.

Every message says what failed and what the operator can do about it.
"""

from nova import exception
from nova.i18n import _


class SnapdriverException(exception.NovaException):
    msg_fmt = _("Snapshot failed: %(reason)s")


class UnknownSnapshotStrategy(exception.Invalid):
    msg_fmt = _("Unknown snapshot strategies %(unknown)s in [snapdriver] "
                "strategies. Installed strategies are: %(available)s. Fix "
                "the option in nova.conf, or install the package that "
                "provides the strategy.")


class NoSnapshotStrategyConfigured(exception.Invalid):
    msg_fmt = _("[snapdriver] strategies is empty. List at least one of the "
                "installed strategies: %(available)s.")


class NoApplicableSnapshotStrategy(SnapdriverException):
    msg_fmt = _("No snapshot strategy in [snapdriver] strategies applies to "
                "instance %(instance)s, so the guest was not touched: "
                "%(reasons)s. Add a strategy that applies to this instance "
                "to [snapdriver] strategies, or change the instance's "
                "state.")


class SnapshotStrategyNotApplicable(SnapdriverException):
    msg_fmt = _("Snapshot strategy %(strategy)s does not apply to "
                "%(target)s: %(reason)s")


class QemuImgFailed(SnapdriverException):
    msg_fmt = _("qemu-img %(action)s of %(path)s failed: %(reason)s")


class QemuImgTimeout(SnapdriverException):
    msg_fmt = _("qemu-img %(action)s of %(path)s did not finish within "
                "%(timeout)s seconds and was killed. Raise [snapdriver] "
                "qemu_img_timeout if the disk is that large or the storage "
                "that slow.")


class BlockJobTimeout(SnapdriverException):
    msg_fmt = _("The %(job)s job of disk %(disk)s did not finish its copy "
                "within %(timeout)s seconds and was aborted; the guest kept "
                "running. Raise [snapdriver] block_job_timeout, or use a "
                "cold strategy for guests that write faster than the copy.")


class BlockJobFailed(SnapdriverException):
    msg_fmt = _("The %(job)s job of disk %(disk)s ended before its copy was "
                "complete (failed, or aborted from outside): %(reason)s. The "
                "guest was not changed; check the libvirtd and QEMU logs and "
                "retry.")


class GuestPausedDuringSnapshot(SnapdriverException):
    msg_fmt = _("The %(job)s job of disk %(disk)s did not give a usable "
                "snapshot (%(reason)s): the guest was paused by an I/O error "
                "during the job, and %(outcome)s. No image was kept.")


class InsufficientSnapshotSpace(SnapdriverException):
    msg_fmt = _("Not enough free space in %(path)s for this snapshot: it "
                "needs %(needed_mb)d MiB plus the [snapdriver] "
                "free_space_margin_mb of %(margin_mb)d MiB, and %(free_mb)d "
                "MiB are free. The guest was not touched. Free space there, "
                "or point [libvirt] snapshots_directory at a larger "
                "filesystem.")


class UnsafeDiskImage(exception.ImageUnacceptable):
    msg_fmt = _("Image %(image_id)s is unacceptable: %(reason)s")


class DiskFormatMismatch(SnapdriverException):
    msg_fmt = _("Disk %(path)s is declared %(declared)s in the domain XML but "
                "holds %(actual)s data; refusing to snapshot it. Check the "
                "instance's disk before retrying.")


class QuiesceRequired(SnapdriverException):
    msg_fmt = _("The image of instance %(instance)s sets os_require_quiesce "
                "but the guest cannot be quiesced: %(reason)s. The guest was "
                "not changed; make sure qemu-guest-agent runs in the guest.")


class SnapshotStrategyNotAllowed(exception.Invalid):
    msg_fmt = _("Snapshot strategies %(names)s named by the %(source)s of "
                "instance %(instance)s are not allowed here, so the guest "
                "was not touched. Allowed strategies: %(allowed)s. The "
                "flavor may only narrow and reorder [snapdriver] "
                "strategies; the image may only narrow what the flavor "
                "leaves.")


class GuestStoppedDuringSnapshot(SnapdriverException):
    msg_fmt = _("The guest of instance %(instance)s stopped during its "
                "%(strategy)s snapshot (shut down from inside, or destroyed "
                "from outside): %(reason)s. The snapshot was abandoned and "
                "the guest left shut off as it is; start it again and "
                "retry.")


class LockPathRequired(SnapdriverException):
    msg_fmt = _("[oslo_concurrency] lock_path is not set, so the snapshot of "
                "%(instance)s cannot take the lock that keeps nova-compute "
                "and the snapdriver command from snapshotting one domain at "
                "once. Set it in nova.conf to a directory on local storage, "
                "the same for both.")
