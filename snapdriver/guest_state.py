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

"""The only module that changes a guest's power state during a snapshot.

:func:`held` brings the guest to the state a strategy needs and always
brings it back to the state it had, even when the capture fails.
:func:`quiesced` freezes the guest's filesystems through the guest agent
when the image asks for it, and always thaws them.
"""

import contextlib
import functools
import time

import libvirt
import libvirt_qemu
from nova.compute import power_state
from oslo_log import log as logging
from oslo_utils import excutils

from snapdriver import exception
from snapdriver import journal
from snapdriver.strategies import base

LOG = logging.getLogger(__name__)

#: Seconds to wait for the guest agent's answer to guest-ping.
AGENT_PING_TIMEOUT = 5


class LibvirtPowerControl(object):
    """Suspend and restore a domain with libvirt alone (outside Nova)."""

    def __init__(self, guest):
        self.guest = guest

    def suspend(self):
        self.guest.save_memory_state()

    def restore(self, paused):
        self.guest.launch(pause=paused)


class NovaPowerControl(object):
    """Suspend and restore an instance the way the stock driver does.

    Uses the driver's own ``suspend()`` (which detaches PCI devices,
    direct-passthrough ports and mediated devices before the managed save)
    and the stock driver's resume-after-snapshot path
    (``_resume_guest_after_snapshot``), which re-attaches the PCI devices
    and direct-passthrough ports only: as after the stock driver's cold
    snapshot, mediated devices (vGPUs) are not re-attached (Nova 34).
    """

    def __init__(self, driver, context, instance, guest):
        self.driver = driver
        self.context = context
        self.instance = instance
        self.guest = guest

    def suspend(self):
        self.driver.suspend(self.context, self.instance)

    def restore(self, paused):
        original = power_state.PAUSED if paused else power_state.RUNNING
        self.driver._resume_guest_after_snapshot(
            self.context, False, original, self.instance, self.guest)


class GuestStateRecord(object):
    """What :func:`held` did, for logs, the CLI and the benchmark."""

    def __init__(self):
        self.suspended_at = None
        #: Wall-clock time (``time.time()``) the managed save returned:
        #: from then until the restore nothing writes the disk.
        self.saved_wall = None
        self.restored_at = None
        #: Set by :func:`held` while it keeps a managed-saved guest.
        self._restore = None

    def release(self):
        """Restore the guest now, before the ``with`` block of
        :func:`held` ends.

        For a strategy that holds the disk as it was at the managed save by
        other means (an internal snapshot) and copies it while the guest
        runs again. Does nothing when :func:`held` saved nothing or has
        restored the guest already. Raises what the restore raised; it is
        not tried again when the block ends.
        """
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()

    @property
    def downtime(self):
        """Seconds between the managed save and the restore, or 0."""
        if self.suspended_at is None:
            return 0.0
        end = self.restored_at or time.monotonic()
        return end - self.suspended_at


@contextlib.contextmanager
def held(request, needed, power, record=None):
    """Hold the guest in the state ``needed`` for the ``with`` block.

    :param request: the :class:`snapdriver.request.SnapshotRequest`.
    :param needed: :data:`base.GUEST_LIVE` (the guest is left as it is) or
        :data:`base.GUEST_QUIET` (a running or paused guest is
        managed-saved, so nothing writes its disk, and restored after to
        the state it had: running, or paused).
    :param power: a :class:`LibvirtPowerControl` or
        :class:`NovaPowerControl`.
    :param record: a :class:`GuestStateRecord` to fill in, or ``None``.
    """
    record = record or GuestStateRecord()
    suspend = needed == base.GUEST_QUIET and request.is_active
    if not suspend:
        yield record
        return

    paused = request.power_state == power_state.PAUSED
    LOG.info('Managed-saving %(state)s guest %(name)s for a cold snapshot',
             {'state': request.power_state_name, 'name': request.name},
             instance=request.instance)
    # NOTE: recorded durably first: if this process is killed while the
    # guest is managed-saved, the next init_host (or the next snapshot of
    # the instance) restores it (journal.recover).
    with journal.recorded(request, paused):
        record.suspended_at = time.monotonic()
        # NOTE: BaseException, not Exception: an interrupt (Ctrl-C in the
        # CLI, GreenletExit or a timeout in nova-compute) must not leave the
        # guest managed-saved either, also when it lands inside the managed
        # save.
        try:
            power.suspend()
        except BaseException:
            with excutils.save_and_reraise_exception():
                # NOTE: restore only what the managed save stopped (a
                # domain killed during the save keeps its managed-save
                # image). A guest that shut itself down after the facts
                # were gathered has no image, and the restore would boot
                # it.
                if not _is_active(request) and _has_managed_save(request):
                    _restore(request, power, paused, record)
        record.saved_wall = time.time()
        record._restore = functools.partial(_restore, request, power, paused,
                                            record)
        try:
            yield record
        except BaseException:
            with excutils.save_and_reraise_exception():
                record.release()
        else:
            record.release()


def _is_active(request):
    try:
        return bool(request.guest.is_active())
    except Exception:
        return True


def _has_managed_save(request):
    try:
        return bool(request.guest._domain.hasManagedSaveImage(0))
    except Exception:
        # Cannot tell: try the restore, which logs what it could not do.
        return True


def _restore(request, power, paused, record):
    LOG.debug('Restoring guest %(name)s to %(state)s',
              {'name': request.name, 'state': request.power_state_name},
              instance=request.instance)
    try:
        power.restore(paused)
    except Exception:
        LOG.exception('Could not restore guest %(name)s to %(state)s after '
                      'the snapshot; it is left managed-saved. Start it '
                      'with "virsh start %(name)s" (or "openstack server '
                      'start").',
                      {'name': request.name,
                       'state': request.power_state_name},
                      instance=request.instance)
        raise
    record.restored_at = time.monotonic()
    LOG.info('Guest %(name)s restored to %(state)s after %(t).3f s',
             {'name': request.name, 'state': request.power_state_name,
              't': record.downtime}, instance=request.instance)


def can_quiesce(request):
    """Return ``None`` when the guest can be quiesced, else the reason."""
    if request.virt_type not in ('kvm', 'qemu'):
        return 'virt_type %s cannot quiesce' % request.virt_type
    if not request.image_properties.get('hw_qemu_guest_agent'):
        return 'the image does not set hw_qemu_guest_agent=yes'
    return None


def requires_quiesce(request):
    return bool(request.image_properties.get('os_require_quiesce'))


def check_quiesce(request):
    """Fail before the guest is touched when quiesce is required but cannot
    happen.

    :raises: :class:`exception.QuiesceRequired`
    """
    if not requires_quiesce(request):
        return
    reason = can_quiesce(request)
    if reason is None and request.power_state == power_state.RUNNING:
        # NOTE: ask the agent now, so a dead agent fails the snapshot before
        # a block job starts rather than after the copy is in sync.
        try:
            libvirt_qemu.qemuAgentCommand(
                request.guest._domain, '{"execute": "guest-ping"}',
                AGENT_PING_TIMEOUT, 0)
        except libvirt.libvirtError as e:
            reason = 'the guest agent does not answer: %s' % e
    if reason:
        raise exception.QuiesceRequired(instance=request.label,
                                        reason=reason)


@contextlib.contextmanager
def quiesced(request, record=None):
    """Freeze the guest's filesystems for the ``with`` block, if asked.

    The freeze happens only when the image sets ``hw_qemu_guest_agent``;
    a failed freeze is fatal only when it sets ``os_require_quiesce`` (the
    stock driver logs and continues even then, which silently breaks the
    promise the image property makes). The thaw always follows.

    :param record: a dict that receives ``frozen_seconds`` and
        ``frozen_filesystems``, or ``None``.
    """
    frozen = False
    if can_quiesce(request) is None:
        try:
            # NOTE: virDomainFSFreeze itself, not Guest.freeze_filesystems:
            # Nova's wrapper drops the number of filesystems frozen, and a
            # guest whose agent freezes none (no filesystem on its disks)
            # gives a crash-consistent image, not a quiesced one.
            count = request.guest._domain.fsFreeze()
            frozen = True
            t0 = time.monotonic()
            if record is not None:
                record['frozen_filesystems'] = count
            LOG.info('Froze %(count)s guest filesystems (quiesce)',
                     {'count': count}, instance=request.instance)
        except Exception as e:
            if requires_quiesce(request):
                raise exception.QuiesceRequired(instance=request.label,
                                                reason=str(e))
            LOG.warning('Quiescing guest %(name)s failed, continuing '
                        'without: %(err)s', {'name': request.name, 'err': e},
                        instance=request.instance)
    try:
        yield frozen
    finally:
        if frozen:
            try:
                request.guest._domain.fsThaw()
                LOG.info('Thawed the guest filesystems after %.3f s',
                         time.monotonic() - t0, instance=request.instance)
            finally:
                if record is not None:
                    record['frozen_seconds'] = time.monotonic() - t0
