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

"""Reasons shared by several strategies for not applying to a snapshot."""

from nova.compute import power_state

from snapdriver import conf
from snapdriver import guest_state
from snapdriver import qemu_img

CONF = conf.CONF

COLD_STATES = (power_state.RUNNING, power_state.PAUSED, power_state.SHUTDOWN)
LIVE_STATES = (power_state.RUNNING, power_state.PAUSED)


def file_disk(request):
    """The root disk must be a local raw or qcow2 file."""
    if request.is_file_disk:
        return None
    return ('the root disk is %(type)s %(fmt)s (%(path)s); only local raw '
            'or qcow2 files are handled' %
            {'type': request.source_type or request.disk_source_type,
             'fmt': request.source_format or 'of unknown format',
             'path': request.disk_path})


def output_format(request):
    if request.image_format in qemu_img.KNOWN_FORMATS:
        return None
    return ('the requested image format %s is not one of %s' %
            (request.image_format, ', '.join(qemu_img.KNOWN_FORMATS)))


def cold_state(request):
    """A cold snapshot needs a guest it can stop and restore."""
    if request.power_state not in COLD_STATES:
        return 'the guest is %s' % request.power_state_name
    if request.is_active and request.virt_type == 'lxc':
        return 'managed save does not work for LXC guests'
    return None


def live_state(request):
    """A live snapshot needs a guest with a running QEMU."""
    if request.power_state not in LIVE_STATES:
        return ('the guest is %s; a live snapshot needs a running or '
                'paused guest' % request.power_state_name)
    if request.virt_type not in ('kvm', 'qemu'):
        return 'virt_type %s has no block jobs' % request.virt_type
    if CONF.workarounds.disable_libvirt_livesnapshot:
        return '[workarounds] disable_libvirt_livesnapshot is set'
    # NOTE(dgenin): instances with encrypted ephemeral storage require
    # cold snapshots (as in the stock driver).
    if CONF.ephemeral_storage_encryption.enabled:
        return ('[ephemeral_storage_encryption] enabled requires cold '
                'snapshots')
    return None


def live_quiesce(request):
    """A live snapshot must honour os_require_quiesce.

    A cold snapshot needs no quiesce (the guest is stopped), so a live
    strategy that cannot quiesce steps aside for the next one.
    """
    if not guest_state.requires_quiesce(request):
        return None
    why = guest_state.can_quiesce(request)
    if why is None and request.power_state == power_state.PAUSED:
        why = 'the guest is paused'
    if why is None:
        return None
    return 'the image requires quiesce (os_require_quiesce) and %s' % why


def first(*reasons):
    """Return the first reason that is not None."""
    for reason in reasons:
        if reason is not None:
            return reason
    return None
