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

"""LibvirtSnapshotDriver's glue to Nova (fakelibvirt, logic only).

The behaviour of the strategies is tested on a real libvirt in
snapdriver/tests/functional; here: loading, start-up checks, delegation to
the stock driver, and a guard against Nova changing what we depend on.
"""

import inspect
from unittest import mock

import fixtures
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.virt import driver as virt_driver
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import host as libvirt_host
from nova.virt.libvirt import utils as libvirt_utils

from snapdriver import driver
from snapdriver import exception
from snapdriver.tests.unit import fakes


class DriverTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.LibvirtFixture())
        self.flags(lock_path=self.useFixture(fixtures.TempDir()).path,
                   group='oslo_concurrency')
        self.driver = driver.LibvirtSnapshotDriver(fake.FakeVirtAPI(), False)

    def test_nova_loads_the_driver_through_the_shim(self):
        self.flags(compute_driver='snapdriver.LibvirtSnapshotDriver')
        loaded = virt_driver.load_compute_driver(fake.FakeVirtAPI())
        self.assertIsInstance(loaded, driver.LibvirtSnapshotDriver)
        self.assertIsInstance(loaded, libvirt_driver.LibvirtDriver)

    def test_shim_reexports_the_class(self):
        import nova.virt.snapdriver as shim
        self.assertIs(driver.LibvirtSnapshotDriver,
                      shim.LibvirtSnapshotDriver)

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'init_host')
    def test_init_host_refuses_unknown_strategies(self, mock_init):
        self.flags(strategies=['live-shallow-rebase', 'nope'],
                   group='snapdriver')
        e = self.assertRaises(exception.UnknownSnapshotStrategy,
                              self.driver.init_host, 'host')
        self.assertIn('nope', str(e))
        self.assertIn('cold-direct-extract', str(e))
        mock_init.assert_not_called()

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'init_host')
    def test_init_host_loads_the_registry_and_cleans(self, mock_init):
        self.flags(snapshots_directory='/snapshots', group='libvirt')
        calls = mock.Mock()
        with mock.patch.object(self.driver, '_clean_snapshot_leftovers',
                               calls.clean), \
                mock.patch.object(driver.runner, 'prepare_targets',
                                  calls.prepare_targets):
            self.driver.init_host('host')
        mock_init.assert_called_once_with('host')
        # Leftovers first: a killed start's template directory is removed
        # by prepare_targets itself, a snapshot's work directory is not.
        self.assertEqual([mock.call.clean(),
                          mock.call.prepare_targets('/snapshots')],
                         calls.mock_calls)
        self.assertEqual(['live-backup', 'live-shallow-rebase',
                          'cold-direct-extract', 'stock'],
                         self.driver.snapshot_registry.names())

    def test_snapshot_without_lock_path_is_refused(self):
        self.flags(lock_path=None, group='oslo_concurrency')
        instance = mock.Mock(uuid='fake-uuid')
        with mock.patch.object(self.driver, '_snapshot') as snap:
            e = self.assertRaises(exception.LockPathRequired,
                                  self.driver.snapshot, mock.sentinel.ctx,
                                  instance, 'image', mock.Mock())
        snap.assert_not_called()
        self.assertIn('[oslo_concurrency] lock_path', str(e))

    def test_missing_domain_is_instance_not_running(self):
        instance = mock.Mock(uuid='fake-uuid')
        with mock.patch.object(
                self.driver._host, 'get_guest',
                side_effect=nova_exception.InstanceNotFound(
                    instance_id='fake-uuid')):
            self.assertRaises(nova_exception.InstanceNotRunning,
                              self.driver.snapshot, mock.sentinel.ctx,
                              instance, 'image', mock.Mock())

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'snapshot')
    @mock.patch('snapdriver.request.build')
    def test_stock_strategy_delegates_to_the_libvirt_driver(
            self, mock_build, mock_snapshot):
        self.flags(strategies=['stock'], group='snapdriver')
        mock_build.return_value = fakes.make_request(driver=self.driver)
        instance = mock.Mock(uuid='fake-uuid')
        update = mock.Mock()
        with mock.patch.object(self.driver._host, 'get_guest'), \
                mock.patch.object(self.driver, '_image_api'):
            self.driver.snapshot(mock.sentinel.ctx, instance, 'image',
                                 update)
        mock_snapshot.assert_called_once_with(mock.sentinel.ctx, instance,
                                              'image', update)

    @mock.patch('snapdriver.request.build')
    def test_no_strategy_fails_before_any_task_state(self, mock_build):
        from nova.compute import power_state
        self.flags(strategies=['live-shallow-rebase'], group='snapdriver')
        mock_build.return_value = fakes.make_request(
            power_state=power_state.SHUTDOWN)
        update = mock.Mock()
        with mock.patch.object(self.driver._host, 'get_guest'), \
                mock.patch.object(self.driver, '_image_api'):
            self.assertRaises(exception.NoApplicableSnapshotStrategy,
                              self.driver.snapshot, mock.sentinel.ctx,
                              mock.Mock(uuid='fake-uuid'), 'image', update)
        update.assert_not_called()


def _params(func):
    return list(inspect.signature(func).parameters)


class NovaInterfaceGuardTestCase(test.NoDBTestCase):
    """Fails loudly when a Nova upgrade changes what snapdriver relies on.

    snapdriver subclasses LibvirtDriver and calls some of its helpers and
    of the libvirt Guest wrappers; each signature below is the one of the
    Nova series in requirements.txt. When this fails, read the new Nova
    code, adapt snapdriver and update the expectation.
    """

    EXPECTED = [
        (libvirt_driver.LibvirtDriver.snapshot,
         ['self', 'context', 'instance', 'image_id', 'update_task_state']),
        (libvirt_driver.LibvirtDriver.init_host, ['self', 'host']),
        (libvirt_driver.LibvirtDriver.suspend,
         ['self', 'context', 'instance']),
        (libvirt_driver.LibvirtDriver._create_snapshot_metadata,
         ['self', 'image_meta', 'instance', 'img_fmt', 'snp_name']),
        (libvirt_driver.LibvirtDriver._resume_guest_after_snapshot,
         ['self', 'context', 'live_snapshot', 'original_power_state',
          'instance', 'guest']),
        (libvirt_host.Host.get_guest, ['self', 'instance']),
        (libvirt_host.Host.list_guests, ['self', 'only_running']),
        (libvirt_guest.Guest.get_block_device, ['self', 'disk']),
        (libvirt_guest.Guest.get_disk,
         ['self', 'device', 'from_persistent_config']),
        (libvirt_guest.Guest.get_xml_desc,
         ['self', 'dump_inactive', 'dump_sensitive', 'dump_migratable']),
        (libvirt_guest.Guest.get_power_state, ['self', 'host']),
        (libvirt_guest.Guest.save_memory_state, ['self']),
        (libvirt_guest.Guest.launch, ['self', 'pause']),
        (libvirt_guest.Guest.freeze_filesystems, ['self']),
        (libvirt_guest.Guest.thaw_filesystems, ['self']),
        (libvirt_guest.BlockDevice.copy,
         ['self', 'dest_xml', 'shallow', 'reuse_ext', 'transient']),
        (libvirt_guest.BlockDevice.abort_job, ['self', 'async_', 'pivot']),
        (libvirt_guest.BlockDevice.get_job_info, ['self']),
        (libvirt_utils.find_disk, ['guest']),
        (libvirt_utils.get_disk_type_from_path, ['path']),
        (libvirt_utils.file_open, ['args', 'kwargs']),
    ]

    def test_signatures(self):
        for func, expected in self.EXPECTED:
            self.assertEqual(expected, _params(func),
                             '%s changed its signature' % func.__qualname__)

    def test_disk_ops_semaphore_exists(self):
        self.assertTrue(hasattr(compute_utils, 'disk_ops_semaphore'))
