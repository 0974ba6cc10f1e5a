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

"""The facts of one snapshot, gathered once before anything is decided."""

import dataclasses
import os
import typing as ty
from xml.etree import ElementTree

from nova.compute import power_state
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import utils as libvirt_utils
from oslo_log import log as logging

from snapdriver import allocation
from snapdriver import conf
from snapdriver import qemu_img
from snapdriver import space

LOG = logging.getLogger(__name__)
CONF = conf.CONF

POWER_STATE_NAMES = {
    power_state.NOSTATE: 'no state',
    power_state.RUNNING: 'running',
    power_state.PAUSED: 'paused',
    power_state.SHUTDOWN: 'shut off',
    power_state.CRASHED: 'crashed',
    power_state.SUSPENDED: 'suspended',
}


@dataclasses.dataclass(frozen=True)
class SnapshotRequest:
    """What a strategy needs to know to decide and to act.

    Built by :func:`build`; strategies only read it.
    """

    #: nova.virt.libvirt.guest.Guest of the domain.
    guest: ty.Any
    #: Domain name, for messages.
    name: str
    #: Domain UUID.
    uuid: str
    #: The nova Instance, or None outside Nova (the CLI).
    instance: ty.Any
    #: Path of the root disk (a file, a block device or 'rbd:pool/vol').
    disk_path: str
    #: Target device of the root disk in the guest ('vda').
    disk_dev: str
    #: libvirt source type of the disk: 'file', 'block', 'network'...
    disk_source_type: str
    #: On-disk format declared by the domain XML ('qcow2', 'raw').
    source_format: ty.Optional[str]
    #: Backend type as Nova names it ('qcow2', 'raw', 'lvm', 'rbd', 'ploop').
    source_type: ty.Optional[str]
    #: Virtual size in bytes (0 for disks that are not files).
    virtual_size: int
    #: Backing file of the disk, or None: of the chain libvirt opened for
    #: an active guest, of the disk's header for an inactive one.
    backing_file: ty.Optional[str]
    #: Format of the backing file, or None.
    backing_format: ty.Optional[str]
    #: nova.compute.power_state value when the snapshot began.
    power_state: int
    #: Output format of the image.
    image_format: str
    #: Compress a qcow2 output ([libvirt] snapshot_compression).
    compress: bool
    #: Image properties that matter for snapshots (quiesce).
    image_properties: ty.Mapping[str, ty.Any]
    #: Parent of the private work directory.
    snapshots_directory: str
    #: [libvirt] virt_type.
    virt_type: str
    #: The libvirt driver, when running inside nova-compute.
    driver: ty.Any = None
    #: :meth:`measure` results by output format; not copied by
    #: ``dataclasses.replace`` (a changed disk is measured again).
    _measured: ty.Dict[str, int] = dataclasses.field(
        default_factory=dict, init=False, compare=False, repr=False)

    def measure(self, fmt):
        """Return the bytes a convert of the disk to ``fmt`` needs.

        Measured once per format and snapshot: the preflight check and
        the reservation before a job ask the same question within
        milliseconds. A raw output needs the virtual size, known already.
        A qcow2 output of the disks Nova makes (a raw file, or a qcow2
        overlay over a raw ``_base`` file) is counted in-process from the
        disk's metadata and extents (:mod:`snapdriver.allocation`, 2-10 ms
        from a cold page cache), laid out as qcow2
        (:func:`space.qcow2_size_bound`, at most a few clusters above what
        ``qemu-img measure`` says); any other disk or format runs
        ``qemu-img measure`` (20-40 ms, most of it the process start, all
        of it before the copy can start).

        :raises: :class:`snapdriver.exception.QemuImgFailed`
        """
        if fmt == 'raw' and self.virtual_size:
            return self.virtual_size
        if fmt not in self._measured:
            data = None
            if fmt == 'qcow2' and self.is_file_disk:
                data = allocation.data_bytes(
                    self.disk_path, self.source_format, self.virtual_size,
                    self.backing_file, self.backing_format)
            if data is not None:
                self._measured[fmt] = space.qcow2_size_bound(
                    self.virtual_size, data)
            else:
                self._measured[fmt] = qemu_img.measure(
                    self.disk_path, self.source_format, fmt)
        return self._measured[fmt]

    def size_bound(self, fmt):
        """Return an upper bound of :meth:`measure`, without a process.

        The blocks the disk file and its raw backing file hold (what the
        image can hold at most, data and metadata of the overlay
        included), laid out as qcow2 (:func:`space.qcow2_size_bound`); a
        raw output needs the virtual size. ``None`` when no bound is known
        without reading the image (a disk that is not a file, an unknown
        size, a backing file that has backing files of its own).
        """
        if (not self.is_file_disk or not self.virtual_size or
                self.backing_format not in (None, 'raw')):
            return None
        if fmt == 'raw':
            return self.virtual_size
        if fmt != 'qcow2':
            return None
        allocated = 0
        for path in (self.disk_path, self.backing_file):
            if path:
                try:
                    allocated += os.stat(path).st_blocks * 512
                except OSError:
                    return None
        return space.qcow2_size_bound(self.virtual_size, allocated)

    def header_backing_file(self):
        """Return the backing file the disk's qcow2 header names, or None.

        The request of an active guest takes its chain from libvirt
        (:func:`build`); this reads the header with ``qemu-img info``. An
        inactive guest's request was built from that header already.

        :raises: :class:`snapdriver.exception.QemuImgFailed`
        """
        if not self.is_active:
            return self.backing_file
        return qemu_img.info(self.disk_path, self.source_format,
                             force_share=True).backing_file

    @property
    def power_state_name(self):
        return POWER_STATE_NAMES.get(self.power_state,
                                     str(self.power_state))

    @property
    def is_active(self):
        return self.power_state in (power_state.RUNNING, power_state.PAUSED)

    @property
    def is_file_disk(self):
        return (self.disk_source_type == 'file' and
                self.source_format in qemu_img.KNOWN_FORMATS and
                self.source_type in qemu_img.KNOWN_FORMATS)

    @property
    def label(self):
        """How messages name the guest: the instance uuid, or the domain."""
        if self.instance is not None:
            return self.instance.uuid
        return self.name


def root_disk_element(request):
    """Return the live XML ``<disk>`` element of the root disk, or None.

    For what nova's config objects do not keep (the mirror destination,
    the backing chain libvirt sees).
    """
    return root_disk_element_of(request.guest, request.disk_dev)


def root_disk_element_of(guest, disk_dev):
    """Return the live XML ``<disk>`` element of ``disk_dev``, or None."""
    root = ElementTree.fromstring(guest.get_xml_desc())
    for elem in root.findall('./devices/disk'):
        target = elem.find('target')
        if target is not None and target.get('dev') == disk_dev:
            return elem
    return None


def _xml_backing(disk_elem):
    """Return ``(file, format)`` of a disk's first backing file, or Nones.

    libvirt writes the chain it opened into the live XML, as
    ``<backingStore type='file'><format type='raw'/><source file=.../>``
    (nova's config parser looks for a ``<driver>`` there, so its
    ``driver_format`` is always ``None``).
    """
    store = disk_elem.find('backingStore') if disk_elem is not None else None
    if store is None:
        return None, None
    source = store.find('source')
    fmt = store.find('format')
    path = source.get('file') if source is not None else None
    return path, (fmt.get('type') if fmt is not None and path else None)


def _root_disk(guest):
    config = guest.get_config()
    for dev in config.devices:
        if isinstance(dev, vconfig.LibvirtConfigGuestDisk):
            return dev
    return None


def build(guest, instance=None, image_format=None, image_properties=None,
          driver=None):
    """Gather the facts of a snapshot of ``guest``.

    Mirrors the first half of ``LibvirtDriver.snapshot()`` so every
    strategy sees the same facts as the stock driver would.

    :param guest: a ``nova.virt.libvirt.guest.Guest``.
    :param instance: the nova Instance, or ``None`` outside Nova.
    :param image_format: the output format; defaults to
        ``[libvirt] snapshot_image_format`` or the disk's own format.
    :param image_properties: image properties (``hw_qemu_guest_agent``,
        ``os_require_quiesce``); defaults to the instance's image meta.
    :param driver: the LibvirtSnapshotDriver, when inside nova-compute.
    :raises: ``nova.exception.InstanceNotFound`` if the domain vanished.
    """
    disk_path, source_format = libvirt_utils.find_disk(guest)
    root = _root_disk(guest)
    disk_dev = root.target_dev if root is not None else None
    disk_source_type = root.source_type if root is not None else 'file'
    source_type = libvirt_utils.get_disk_type_from_path(disk_path)
    if source_type is None:
        source_type = source_format

    if image_format is None:
        image_format = CONF.libvirt.snapshot_image_format or source_type
    # NOTE(bfilippov): save lvm and rbd as raw (as the stock driver does)
    if image_format in ('lvm', 'rbd'):
        image_format = 'raw'

    if image_properties is None:
        image_properties = {}
        if instance is not None:
            props = instance.image_meta.properties
            for key in ('hw_qemu_guest_agent', 'os_require_quiesce'):
                if props.obj_attr_is_set(key):
                    image_properties[key] = props.get(key)

    state = guest.get_power_state(None)

    virtual_size = 0
    backing_file = backing_format = None
    if (disk_source_type == 'file' and
            source_format in qemu_img.KNOWN_FORMATS):
        if state in (power_state.RUNNING, power_state.PAUSED):
            # NOTE: a running domain's disk is described by libvirt without
            # a process: the chain libvirt opened for QEMU (the live XML's
            # backingStore) and the size QEMU reports. A qemu-img info
            # costs 10-20 ms before a live copy can start; the strategies
            # that open the disk file themselves still compare its header
            # with this chain (runner.check_source).
            virtual_size = guest._domain.blockInfo(disk_path)[0]
            backing_file, backing_format = _xml_backing(
                root_disk_element_of(guest, disk_dev))
        else:
            # NOTE: -U (force share): info only reads the header.
            info = qemu_img.info(disk_path, source_format, force_share=True)
            virtual_size = info.virtual_size
            backing_file = info.backing_file
            backing_format = info.backing_file_format

    return SnapshotRequest(
        guest=guest,
        name=guest.name,
        uuid=guest.uuid,
        instance=instance,
        disk_path=disk_path,
        disk_dev=disk_dev,
        disk_source_type=disk_source_type,
        source_format=source_format,
        source_type=source_type,
        virtual_size=virtual_size,
        backing_file=backing_file,
        backing_format=backing_format,
        power_state=state,
        image_format=image_format,
        compress=bool(CONF.libvirt.snapshot_compression and
                      image_format == 'qcow2'),
        image_properties=dict(image_properties),
        snapshots_directory=CONF.libvirt.snapshots_directory,
        virt_type=CONF.libvirt.virt_type,
        driver=driver,
    )
