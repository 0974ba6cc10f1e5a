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

"""A base for functional tests that drive LibvirtSnapshotDriver against the
real libvirt and QEMU of this host.

The driver is the real class, connected to ``qemu:///system``; only Nova's
image service is replaced, by :class:`FakeImageService`, which stores
uploads in files so tests can compare them with the disk.
"""

import os
import shutil
import tempfile
import threading

import libvirt
from nova.compute import task_states
from nova import context as nova_context
from nova import exception as nova_exception
from nova.network import model as network_model
from nova import objects
from nova.virt import fake as fake_virt
from oslo_config import fixture as config_fixture
from oslotest import base

from snapdriver import conf
from snapdriver import driver
from snapdriver import qemu_img
from snapdriver.tests.functional import fixtures as real

CONF = conf.CONF

objects.register_all()

_STATE_NAMES = real.RealDomain._STATES


class FakeImageService(object):
    """The image API calls snapshot() makes, storing uploads in files.

    :ivar uploads: image id -> path of the uploaded data.
    :ivar metadata: image id -> metadata of the last update.
    :ivar deleted: image ids to answer with ImageNotFound on update.
    :ivar fail_upload: an exception to raise from update, or None.
    """

    def __init__(self, directory):
        self.directory = directory
        self.uploads = {}
        self.metadata = {}
        self.deleted = set()
        self.fail_upload = None

    def get(self, context, image_id):
        if image_id in self.deleted:
            raise nova_exception.ImageNotFound(image_id=image_id)
        return {'id': image_id, 'name': 'snapshot-%s' % image_id,
                'status': 'queued'}

    def update(self, context, image_id, metadata, data=None,
               purge_props=True):
        if image_id in self.deleted:
            raise nova_exception.ImageNotFound(image_id=image_id)
        if self.fail_upload is not None:
            raise self.fail_upload
        self.metadata[image_id] = metadata
        if data is not None:
            path = os.path.join(self.directory, image_id)
            with open(path, 'wb') as f:
                for chunk in iter(lambda: data.read(1 << 20), b''):
                    f.write(chunk)
            self.uploads[image_id] = path
        return dict(metadata, id=image_id)


class StateSampler(threading.Thread):
    """Samples a domain's state and persistence every few milliseconds.

    Uses its own libvirt connection. :meth:`start` returns once the first
    sample is taken, and :meth:`stop` once a last sample was taken after it
    was called: the samples bracket whatever the caller ran in between, and
    ``window_samples`` counts the samples taken while it ran. Whatever
    stops the sampler (a libvirt error, a lookup that fails) is raised
    again by :meth:`start` or :meth:`stop` as a test failure; a domain that
    disappears while sampled is recorded as the state ``gone``.

    ``states`` is the set of state words seen, ``transient_samples`` how
    many samples found the domain not persistent, ``samples`` how many
    were taken.
    """

    #: How long start() waits for the first sample and stop() for the last.
    TIMEOUT = 60

    def __init__(self, uuid, interval=0.005):
        super().__init__(daemon=True)
        self.uuid = uuid
        self.interval = interval
        self.states = set()
        self.samples = 0
        self.window_samples = 0
        self.transient_samples = 0
        self.error = None
        self._ready = threading.Event()
        self._in_window = False
        self._stop_event = threading.Event()

    def start(self):
        """Start sampling; return once the first sample is taken.

        :raises: ``AssertionError`` when the sampler failed or took no
            sample within :attr:`TIMEOUT` seconds.
        """
        super().start()
        if not self._ready.wait(self.TIMEOUT):
            self._stop_event.set()
            raise AssertionError('the state sampler of %s took no sample '
                                 'in %d s' % (self.uuid, self.TIMEOUT))
        self._raise_error()
        self._in_window = True

    def _raise_error(self):
        if self.error is not None:
            raise AssertionError('the state sampler of %s failed: %r' % (
                self.uuid, self.error)) from self.error

    def _sample(self, dom):
        try:
            state, _reason = dom.state()
            persistent = dom.isPersistent()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            self.states.add('gone')
        else:
            self.states.add(_STATE_NAMES.get(state, str(state)))
            if not persistent:
                self.transient_samples += 1
        self.samples += 1

    def run(self):
        try:
            conn = libvirt.open(real.LIBVIRT_URI)
            try:
                dom = conn.lookupByUUIDString(self.uuid)
                while True:
                    # Read before the sample: the sample taken once the
                    # stop was asked for is the last one.
                    stopping = self._stop_event.is_set()
                    in_window = self._in_window
                    self._sample(dom)
                    if in_window:
                        self.window_samples += 1
                    self._ready.set()
                    if stopping:
                        break
                    self._stop_event.wait(self.interval)
            finally:
                conn.close()
        except Exception as e:
            self.error = e
        finally:
            self._ready.set()

    def stop(self):
        """Take a last sample, stop, and fail if the sampler failed.

        :raises: ``AssertionError`` when the sampler failed or did not
            stop within :attr:`TIMEOUT` seconds.
        """
        self._in_window = False
        self._stop_event.set()
        self.join(self.TIMEOUT)
        if self.is_alive():
            raise AssertionError('the state sampler of %s did not stop in '
                                 '%d s' % (self.uuid, self.TIMEOUT))
        self._raise_error()


def only_own_guests(drv, uuids):
    """Make ``drv``'s host list only the domains whose UUID is in ``uuids``.

    ``uuids`` is a set the caller may still fill.
    """
    real_list = drv._host.list_guests

    def list_guests(only_running=True):
        return [guest for guest in real_list(only_running=only_running)
                if guest.uuid.lower() in uuids]
    drv._host.list_guests = list_guests


class DriverTestCase(base.BaseTestCase):
    """Runs LibvirtSnapshotDriver.snapshot() on real throwaway domains."""

    def setUp(self):
        super().setUp()
        reason = real.libvirt_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.conf = self.useFixture(config_fixture.Config(CONF))
        parent = (real.DEFAULT_IMAGES_PARENT
                  if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                  else tempfile.gettempdir())
        # NOTE: QEMU (the libvirt-qemu user) must traverse the parents of
        # the snapshots directory to open a live strategy's overlay; 0711
        # lets it traverse without listing, and nothing is world-writable.
        self.workdir = tempfile.mkdtemp(prefix='snapdriver-drv-', dir=parent)
        os.chmod(self.workdir, 0o711)
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.snapshots_directory = os.path.join(self.workdir, 'snapshots')
        os.mkdir(self.snapshots_directory, 0o711)
        self.uploads_directory = os.path.join(self.workdir, 'uploads')
        os.mkdir(self.uploads_directory, 0o700)
        # The lock shared by nova-compute and the snapdriver command.
        self.lock_path = os.path.join(self.workdir, 'locks')
        self.flags(lock_path=self.lock_path, group='oslo_concurrency')
        self.flags(connection_uri=real.LIBVIRT_URI,
                   virt_type='kvm' if real.kvm_usable() else 'qemu',
                   snapshots_directory=self.snapshots_directory,
                   group='libvirt')
        self.driver = driver.LibvirtSnapshotDriver(
            fake_virt.FakeVirtAPI(), False)
        self.images = FakeImageService(self.uploads_directory)
        self.driver._image_api = self.images
        self.context = nova_context.get_admin_context()
        # NOTE: each test is a compute host of its own (its own lock path
        # and snapshots directory): its service-start cleanup
        # (_clean_snapshot_leftovers) must see its own domains only, not
        # those of the tests running beside it on the same libvirtd.
        self.own_uuids = set()
        only_own_guests(self.driver, self.own_uuids)

    def flags(self, group=None, **kw):
        for name, value in kw.items():
            self.conf.config(group=group, **{name: value})

    def make_domain(self, start_state='running', **kwargs):
        domain = self.useFixture(real.RealDomain(start_state=start_state,
                                                 **kwargs))
        self.own_uuids.add(domain.uuid.lower())
        return domain

    def make_instance(self, domain, image_properties=None):
        system_metadata = {}
        for key, value in (image_properties or {}).items():
            system_metadata['image_%s' % key] = value
        return objects.Instance(
            uuid=domain.uuid, kernel_id='', ramdisk_id='',
            project_id='fake-project', user_id='fake-user', os_type=None,
            image_ref='', numa_topology=None,
            system_metadata=system_metadata,
            pci_devices=objects.PciDeviceList(objects=[]),
            pci_requests=objects.InstancePCIRequests(requests=[]),
            info_cache=objects.InstanceInfoCache(
                network_info=network_model.NetworkInfo([])))

    def snapshot(self, domain, instance=None, image_id='image-1',
                 sample=False):
        """Run the driver's snapshot(); return (task states, sampler)."""
        instance = instance or self.make_instance(domain)
        calls = []

        def update_task_state(task_state, expected_state=None):
            calls.append((task_state, expected_state))

        sampler = None
        if sample:
            sampler = StateSampler(domain.uuid)
            sampler.start()
        try:
            self.driver.snapshot(self.context, instance, image_id,
                                 update_task_state)
        finally:
            if sampler is not None:
                sampler.stop()
        return calls, sampler

    # Assertions

    def assert_task_states(self, calls):
        self.assertEqual(
            [(task_states.IMAGE_PENDING_UPLOAD, None),
             (task_states.IMAGE_UPLOADING, task_states.IMAGE_PENDING_UPLOAD)],
            calls)

    def assert_image_equals_disk(self, image_id, fmt, domain):
        path = self.images.uploads[image_id]
        self.assertEqual(fmt, self.images.metadata[image_id]['disk_format'])
        self.assertTrue(
            real.images_equal(path, fmt, domain.images.reference_path, 'raw'),
            'uploaded image differs from the disk content')
        self.assertIsNone(qemu_img.info(path, fmt).backing_file)

    def assert_check_clean(self, path, fmt, force_share=False):
        """``qemu-img check`` exits 0: no check error, corruption or leak."""
        report = real.qemu_img_check(path, fmt, force_share=force_share)
        self.assertEqual([], real.check_problems(report),
                         'qemu-img check of %s: %s' % (path, report))

    def assert_sampled_throughout(self, sampler):
        """The sampler ran before, during and after what it watched."""
        # start() returned after a first sample and stop() after a last
        # one, so two samples bracket the snapshot; at least one more was
        # taken while it ran.
        self.assertGreaterEqual(sampler.samples, 2)
        self.assertGreaterEqual(sampler.window_samples, 1,
                                'no state sample during the snapshot')

    def assert_guest_intact(self, domain, state):
        """The guest is as it was: state, persistence, disk, no leftovers."""
        self.assertEqual(state, domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertFalse(domain.has_managed_save())
        force = state != 'shutoff'
        self.assert_check_clean(domain.disk_path, 'qcow2', force_share=force)
        self.assertEqual(
            [], real.internal_snapshots(domain.disk_path, force_share=force))
        self.assertTrue(real.images_equal(
            domain.disk_path, 'qcow2', domain.images.reference_path, 'raw',
            force_share=force), 'the disk content changed')
        self.assertEqual([], os.listdir(self.snapshots_directory))
        if state != 'shutoff':
            self.assertEqual({}, domain.dom.blockJobInfo('vda', 0),
                             'a block job is left on the disk')
