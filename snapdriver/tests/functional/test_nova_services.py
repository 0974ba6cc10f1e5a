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

"""LibvirtSnapshotDriver inside Nova's own services, through the REST API.

Nova's API, conductor, scheduler and compute run in-process on
``nova.tests.functional.libvirt.base.ServersTestBase`` (fakelibvirt, Nova's
fake image service ``GlanceFixture``); only ``compute_driver`` differs from
Nova's own libvirt functional tests. ``createImage``, ``createBackup`` and
shelve go through the compute manager into our ``snapshot()``.

fakelibvirt has no disks: before a snapshot, each test writes a real small
qcow2 at the path the fake domain's XML names as its root disk, so the
strategies run the real ``qemu-img`` on it and the uploaded image is
compared with that disk.
"""

import io
import os
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import fixtures
from nova.compute import power_state
from nova import conf
from nova import context as nova_context
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base
from nova.virt.libvirt import utils as libvirt_utils
from sqlalchemy import exc as sqla_exc

from snapdriver import driver
from snapdriver import qemu_img

CONF = conf.CONF

#: Where an installed Nova keeps its API paste file (the base looks for
#: it beside the nova package, where only a source tree has it).
API_PASTE = os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')
_REAL_FILE_OPEN = libvirt_utils.file_open


def _file_open(*args, **kwargs):
    # NOTE: ServersTestBase replaces libvirt_utils.file_open (also the one
    # our driver uploads through) with an empty BytesIO, as fakelibvirt's
    # disks do not exist. Read the real file when there is one, so what is
    # uploaded is what the strategy wrote; keep the stand-in otherwise
    # (console logs of instance directories that were never created).
    if os.path.exists(args[0]):
        return _REAL_FILE_OPEN(*args, **kwargs)
    return io.BytesIO(b'')


class FaithfulManagedSave(fixtures.Fixture):
    """Make fakelibvirt's managed save behave as libvirt's does.

    fakelibvirt's ``managedSave()`` leaves the domain's state as it was
    (a saved domain still reports running, or paused) and its
    ``createWithFlags()`` ignores its flags and always starts the domain
    running. A paused guest therefore comes back *running* from any cold
    snapshot (ours or Nova's): Nova's ``_resume_guest_after_snapshot()``
    reads the state after the save, sees "paused", asks for
    ``VIR_DOMAIN_START_PAUSED``, and fakelibvirt drops the flag.

    In libvirt a managed-saved domain is shut off and starting it restores
    the state recorded in the save image (paused stays paused), or paused
    when ``VIR_DOMAIN_START_PAUSED`` is given. This fixture does that.
    """

    def setUp(self):
        super().setUp()
        domain = fakelibvirt.Domain
        orig_save = domain.managedSave
        orig_create = domain.createWithFlags

        def managed_save(dom, flags):
            saved_state = dom._state
            orig_save(dom, flags)
            dom._state = fakelibvirt.VIR_DOMAIN_SHUTOFF
            dom.snapdriver_saved_state = saved_state

        def create_with_flags(dom, flags):
            saved_state = (getattr(dom, 'snapdriver_saved_state', None)
                           if dom.hasManagedSaveImage(0) else None)
            orig_create(dom, flags)
            dom.snapdriver_saved_state = None
            if (flags & fakelibvirt.VIR_DOMAIN_START_PAUSED or
                    saved_state == fakelibvirt.VIR_DOMAIN_PAUSED):
                dom._state = fakelibvirt.VIR_DOMAIN_PAUSED

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.managedSave', managed_save))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.createWithFlags',
            create_with_flags))


class BlockInfo(fixtures.Fixture):
    """Give fakelibvirt's Domain the ``blockInfo()`` libvirt has.

    The driver reads a running guest's disk size from libvirt
    (``virDomainGetBlockInfo``); fakelibvirt lacks the call. Like libvirt
    for a file disk, this answers the virtual size of the (real, small)
    disk file the test wrote, its allocation and its size on the host.
    """

    def setUp(self):
        super().setUp()

        def block_info(dom, path, flags=0):
            root = ElementTree.fromstring(dom.XMLDesc(0))
            fmt = next(
                disk.find('driver').get('type')
                for disk in root.findall('./devices/disk')
                if disk.find('source') is not None and
                disk.find('source').get('file') == path)
            size = qemu_img.info(path, fmt, force_share=True).virtual_size
            st = os.stat(path)
            return [size, st.st_blocks * 512, st.st_size]

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.blockInfo', block_info))


class NovaServicesTestCase(base.ServersTestBase):
    """Snapshots through the REST API with Nova's services in-process."""

    def setUp(self):
        self.flags(api_paste_config=API_PASTE, group='wsgi')
        super().setUp()
        # NOTE: Nova 34's tests turn SQLAlchemy deprecation warnings raised
        # in nova into errors; SQLAlchemy 2.1 deprecates orm.noload(), which
        # nova.db.main.api._build_instance_get() uses, so pausing a server
        # fails with a 500 in this venv without this filter.
        self.useFixture(fixtures.WarningsFilter([
            {'action': 'ignore', 'category': sqla_exc.SADeprecationWarning,
             'message': r'The noload\(\) option is deprecated'}]))
        # NOTE: fakelibvirt does not emulate block copy: blockCopy() does
        # nothing and blockJobInfo() answers {} ("no job"), so
        # live-shallow-rebase sees its job vanish and fails (see
        # test_live_strategy_failure_leaves_server_intact). The service
        # tests use the cold strategy, whose managed save and restart
        # fakelibvirt emulates; the live path runs on a real domain in
        # test_strategies.
        self.flags(strategies=['cold-direct-extract'], group='snapdriver')
        self.useFixture(FaithfulManagedSave())
        self.useFixture(BlockInfo())
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.utils.file_open', _file_open))
        # NOTE: keeps the space check independent of the free space of the
        # test node; the check itself still runs.
        self.flags(free_space_margin_mb=0, group='snapdriver')
        self.snapshots_directory = os.path.join(
            CONF.instances_path, 'snapshots')
        self.flags(snapshots_directory=self.snapshots_directory,
                   group='libvirt')
        os.mkdir(self.snapshots_directory)
        # Records what each image upload carried: GlanceFixture keeps the
        # metadata but drops the data.
        self.uploads = {}
        real_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            if data is not None:
                self.uploads[image_id] = data.read()
            return real_update(context, image_id, metadata,
                               purge_props=purge_props)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.GlanceFixture.update',
            lambda _self, *a, **k: update(*a, **k)))
        self.start_compute()
        self.compute = self.computes['compute1']

    def _setup_compute_service(self):
        # NOTE: ServersTestBase sets compute_driver=libvirt.LibvirtDriver
        # here; the services then load ours the way an operator's nova.conf
        # does.
        self.flags(compute_driver='snapdriver.LibvirtSnapshotDriver')

    # helpers

    def _guest(self, server):
        # NOTE: get_guest() needs only the uuid (the instance itself lives
        # in the cell database).
        instance = objects.Instance(uuid=server['id'])
        return self.compute.driver._host.get_guest(instance)

    def _make_root_disk(self, server):
        """Write a real disk where the fake domain's root disk is.

        LibvirtImageBackendFixture always declares the root disk raw in the
        domain XML (its libvirt_info() hardcodes driver_format='raw'), so
        the disk is raw: a qcow2 there would be refused, rightly, as a
        format mismatch.
        """
        path, fmt = libvirt_utils.find_disk(self._guest(server))
        self.assertEqual('raw', fmt)
        self.assertTrue(path.startswith(CONF.instances_path + '/'), path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, path, '16M'],
                       check=True)
        subprocess.run(['qemu-io', '-f', fmt, '-c', 'write -q -P 0x5a 1M 2M',
                        path], check=True)
        return path

    def _domain_state(self, server):
        return self._guest(server).get_power_state(None)

    def _boot(self, name='srv'):
        server = self._create_server(name=name)
        disk = self._make_root_disk(server)
        return server, disk

    def _image_named(self, name):
        found = [img for img in self.glance.images.values()
                 if img['name'] == name]
        self.assertEqual(1, len(found), found)
        return found[0]

    def _wait_idle(self, server, status):
        return self._wait_for_server_parameter(
            server, {'status': status, 'OS-EXT-STS:task_state': None},
            max_retries=40)

    def assert_image_of_disk(self, image, server, disk, image_type,
                             fmt='raw'):
        """The image is active, described as a snapshot of ``server``
        should be, and its data is the content of ``disk`` in ``fmt``.
        """
        self.assertEqual('active', image['status'])
        self.assertEqual(fmt, image['disk_format'])
        # The container format is the one of the image the server booted.
        source = self.glance.show(None, server['image']['id'])
        self.assertEqual(source['container_format'],
                         image['container_format'])
        props = image['properties']
        self.assertEqual('snapshot', props['image_location'])
        self.assertEqual('available', props['image_state'])
        self.assertEqual(image_type, props['image_type'])
        self.assertEqual(server['id'], props['instance_uuid'])
        self.assertEqual(server['tenant_id'], props['owner_id'])
        self.assertEqual(server['tenant_id'], props['owner'])
        data = self.uploads[image['id']]
        if fmt == 'raw':
            with open(disk, 'rb') as f:
                self.assertTrue(data == f.read(),
                                'the uploaded image differs from the disk')
            return
        self.assertEqual(b'QFI\xfb', data[:4])
        out = os.path.join(CONF.instances_path, 'upload.%s' % fmt)
        with open(out, 'wb') as f:
            f.write(data)
        self.addCleanup(os.unlink, out)
        result = subprocess.run(
            ['qemu-img', 'compare', '-q', '-f', 'raw', '-F', fmt, disk, out],
            capture_output=True, text=True)
        self.assertEqual(0, result.returncode, result.stdout + result.stderr)

    def assert_no_leftovers(self):
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def _pause_server(self, server):
        self.api.post_server_action(server['id'], {'pause': None})
        return self._wait_for_state_change(server, 'PAUSED')

    def _snapshot(self, server, name):
        self._snapshot_server(server, name)
        self.notifier.wait_for_versioned_notifications(
            'instance.snapshot.end')

    # tests

    def test_compute_runs_our_driver(self):
        self.assertIsInstance(self.compute.driver,
                              driver.LibvirtSnapshotDriver)
        self.assertEqual(['cold-direct-extract'],
                         self.compute.driver.snapshot_registry.names())

    def test_create_image_active_server(self):
        server, disk = self._boot()
        self._snapshot(server, 'snap')
        server = self._wait_idle(server, 'ACTIVE')
        self.assert_image_of_disk(self._image_named('snap'), server, disk,
                                  'snapshot')
        self.assertEqual(power_state.RUNNING, self._domain_state(server))
        self.assertFalse(self._guest(server)._domain.hasManagedSaveImage(0))
        self.assert_no_leftovers()

    def test_create_image_paused_server(self):
        self.flags(snapshot_image_format='qcow2', group='libvirt')
        server, disk = self._boot()
        server = self._pause_server(server)
        self._snapshot(server, 'snap')
        server = self._wait_idle(server, 'PAUSED')
        self.assert_image_of_disk(self._image_named('snap'), server, disk,
                                  'snapshot', fmt='qcow2')
        self.assertEqual(power_state.PAUSED, self._domain_state(server))
        self.assertFalse(self._guest(server)._domain.hasManagedSaveImage(0))
        self.assert_no_leftovers()

    def test_create_image_stopped_server(self):
        server, disk = self._boot()
        server = self._stop_server(server)
        self._snapshot(server, 'snap')
        server = self._wait_idle(server, 'SHUTOFF')
        self.assert_image_of_disk(self._image_named('snap'), server, disk,
                                  'snapshot')
        self.assertEqual(power_state.SHUTDOWN, self._domain_state(server))
        self.assert_no_leftovers()

    def test_first_snapshot_creates_snapshots_directory(self):
        # On a fresh compute host the default $instances_path/snapshots
        # does not exist yet: the free-space preflight must not fail on it
        # (the stock driver creates it with ensure_tree).
        os.rmdir(self.snapshots_directory)
        server, disk = self._boot()
        self._snapshot_server(server, 'snap')
        server = self._wait_idle(server, 'ACTIVE')
        self.assert_image_of_disk(self._image_named('snap'), server, disk,
                                  'snapshot')

    def test_create_backup(self):
        server, disk = self._boot()
        # NOTE: GlanceFixture.detail() ignores filters, so the rotation
        # that follows the backup would see every image of the fixture as
        # an older backup and delete some (possibly this one); a rotation
        # above their number keeps them all.
        self.api.post_server_action(server['id'], {'createBackup': {
            'name': 'backup-1', 'backup_type': 'daily', 'rotation': 100}})
        self.notifier.wait_for_versioned_notifications(
            'instance.snapshot.end')
        server = self._wait_idle(server, 'ACTIVE')
        image = self._image_named('backup-1')
        self.assert_image_of_disk(image, server, disk, 'backup')
        self.assertEqual('daily', image['properties']['backup_type'])
        self.assertEqual(power_state.RUNNING, self._domain_state(server))
        self.assert_no_leftovers()

    def test_shelve_offload_and_unshelve(self):
        self.flags(shelved_offload_time=0)
        server, disk = self._boot()
        # The offload deletes the instance directory: keep a copy of the
        # disk to compare the image with.
        reference = os.path.join(CONF.instances_path, 'reference.raw')
        shutil.copyfile(disk, reference)
        server = self._shelve_server(server)
        self.assertEqual('SHELVED_OFFLOADED', server['status'])
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        image = self._image_named('%s-shelved' % server['name'])
        # Shelve powers the guest off first: the disk is converted as is.
        self.assert_image_of_disk(image, server, reference, 'snapshot')
        self.assert_no_leftovers()

        server = self._unshelve_server(server)
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        self.assertEqual(power_state.RUNNING, self._domain_state(server))

    def test_stock_strategy_runs_novas_own_snapshot(self):
        # [snapdriver] strategies = stock hands the whole snapshot to the
        # inherited LibvirtDriver.snapshot(). Its root disk comes from
        # LibvirtImageBackendFixture; give it the cold extraction of Nova's
        # raw backend (imagebackend.Flat.snapshot_extract) so the upload
        # carries real data. Live snapshots are off so a running guest goes
        # through Nova's own managed save and restore.
        self.flags(strategies=['stock'], group='snapdriver')
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        self.compute.driver._snapshot_registry = None
        server, disk = self._boot()
        # The mock LibvirtImageBackendFixture hands Nova for this disk.
        root = self.compute.driver.image_backend.by_libvirt_path(
            objects.Instance(uuid=server['id']), disk, image_type='raw')
        root.snapshot_extract.side_effect = (
            lambda target, out_format: libvirt_utils.extract_snapshot(
                disk, 'raw', target, out_format))

        self._snapshot(server, 'snap')
        server = self._wait_idle(server, 'ACTIVE')

        root.direct_snapshot.assert_called_once()
        root.snapshot_extract.assert_called_once()
        target = root.snapshot_extract.call_args[0][0]
        self.assertEqual(self.snapshots_directory,
                         os.path.dirname(os.path.dirname(target)))
        self.assert_image_of_disk(self._image_named('snap'), server, disk,
                                  'snapshot')
        self.assertEqual(power_state.RUNNING, self._domain_state(server))
        self.assert_no_leftovers()

    def test_live_strategy_failure_leaves_server_intact(self):
        # fakelibvirt's blockCopy() starts nothing and its blockJobInfo()
        # reports no job: live-shallow-rebase must fail cleanly (the job
        # "disappeared"), not report a snapshot, and Nova must delete the
        # image and leave the server as it was.
        self.flags(strategies=['live-shallow-rebase'], group='snapdriver')
        self.compute.driver._snapshot_registry = None
        server, disk = self._boot()
        self._snapshot_server(server, 'snap')
        self.notifier.wait_for_versioned_notifications(
            'compute.exception')
        server = self._wait_idle(server, 'ACTIVE')
        self.assertEqual([], [img for img in self.glance.images.values()
                              if img['name'] == 'snap'])
        self.assertEqual({}, self.uploads)
        self.assertEqual(power_state.RUNNING, self._domain_state(server))
        self.assert_no_leftovers()

    def test_guest_stopped_mid_live_snapshot_reverts_the_task(self):
        # The guest stops (shut down from inside, or destroyed from outside)
        # while the live strategy polls its block job; libvirt then answers
        # "domain is not running" (VIR_ERR_OPERATION_INVALID), as it does on
        # a real host (test_faults.BlockJobFaultTestCase). Nova must revert
        # the task state and record a fault, not take it for a deleted
        # instance and leave the server in image_pending_upload.
        self.flags(strategies=['live-shallow-rebase'], group='snapdriver')
        self.compute.driver._snapshot_registry = None
        server, disk = self._boot()

        def block_job_info(dom, disk, flags):
            dom.destroy()
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError,
                'Requested operation is not valid: domain is not running',
                error_code=fakelibvirt.VIR_ERR_OPERATION_INVALID,
                error_domain=fakelibvirt.VIR_FROM_QEMU)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.blockJobInfo',
            block_job_info))
        # NOTE: LibvirtFixture points only nova.virt.libvirt.* at
        # fakelibvirt, whose libvirtError is not libvirt's: do the same for
        # the runner, which tells a stopped domain from other errors.
        self.useFixture(fixtures.MonkeyPatch('snapdriver.runner.libvirt',
                                             fakelibvirt))
        self._snapshot_server(server, 'snap')
        # NOTE: Nova 34 runs _snapshot_instance in a task of its own; its
        # wrap_exception notifies the failure once the fault is recorded.
        self.notifier.wait_for_versioned_notifications('compute.exception')
        server = self._wait_idle(server, 'ACTIVE')

        self.assertIsNone(server['OS-EXT-STS:task_state'])
        ctxt = nova_context.get_admin_context()
        with nova_context.target_cell(
                ctxt, self.cell_mappings['cell1']) as cctxt:
            faults = objects.InstanceFaultList.get_by_instance_uuids(
                cctxt, [server['id']])
        self.assertEqual(1, len(faults), faults)
        self.assertIn('stopped during its live-shallow-rebase snapshot',
                      faults[0].message)
        self.assertEqual([], [img for img in self.glance.images.values()
                              if img['name'] == 'snap'])
        self.assertEqual(power_state.SHUTDOWN, self._domain_state(server))
        self.assert_no_leftovers()
