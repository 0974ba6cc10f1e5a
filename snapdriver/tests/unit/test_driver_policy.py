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

"""LibvirtSnapshotDriver applies the flavor/image policy and stamps
provenance (fakelibvirt, logic only; through Nova's services in
snapdriver/tests/functional/test_nova_policy.py).
"""

import contextlib
import os
from unittest import mock

import fixtures
from nova.compute import power_state
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver

from snapdriver import driver
from snapdriver import exception
from snapdriver import runner
from snapdriver.tests.unit import fakes

UUID = '4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11'


def _instance(flavor_spec=None, image_prop=None):
    specs = {}
    if flavor_spec is not None:
        specs['snapdriver:strategies'] = flavor_spec
    sysmeta = {}
    if image_prop is not None:
        sysmeta['image_snapdriver_strategies'] = image_prop
    return objects.Instance(uuid=UUID, image_ref='', flavor=objects.Flavor(
        extra_specs=specs), system_metadata=sysmeta)


class DriverPolicyTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.LibvirtFixture())
        # The external per-domain lock of the driver and the command.
        self.flags(lock_path=self.useFixture(fixtures.TempDir()).path,
                   group='oslo_concurrency')
        self.driver = driver.LibvirtSnapshotDriver(fake.FakeVirtAPI(), False)
        self.build = self.useFixture(fixtures.MockPatch(
            'snapdriver.request.build')).mock
        self.useFixture(fixtures.MockPatchObject(self.driver._host,
                                                 'get_guest'))
        self.image_api = self.useFixture(fixtures.MockPatchObject(
            self.driver, '_image_api')).mock
        self.image_api.get.return_value = {'name': 'snap'}
        self.captured = self.useFixture(fixtures.MockPatch(
            'snapdriver.runner.captured')).mock
        self.update = mock.Mock()

    def _snapshot(self, instance):
        return self.driver.snapshot(mock.sentinel.ctx, instance, 'image-id',
                                    self.update)

    def test_live_only_flavor_fails_cleanly_for_a_shut_off_guest(self):
        self.build.return_value = fakes.make_request(
            power_state=power_state.SHUTDOWN, instance=_instance())
        e = self.assertRaises(
            exception.NoApplicableSnapshotStrategy, self._snapshot,
            _instance('live-backup, live-shallow-rebase'))
        self.assertIn('live-backup', str(e))
        self.assertNotIn('cold-direct-extract', str(e))
        self.captured.assert_not_called()
        self.update.assert_not_called()
        self.image_api.update.assert_not_called()

    def test_flavor_outside_config_is_refused_before_the_guest(self):
        self.build.return_value = fakes.make_request(instance=_instance())
        e = self.assertRaises(exception.SnapshotStrategyNotAllowed,
                              self._snapshot, _instance('cold-internal'))
        self.assertIn('Allowed strategies: live-backup, live-shallow-rebase,'
                      ' cold-direct-extract, stock', str(e))
        self.captured.assert_not_called()
        self.update.assert_not_called()

    def test_image_cannot_widen_the_flavor(self):
        self.build.return_value = fakes.make_request(instance=_instance())
        e = self.assertRaises(
            exception.SnapshotStrategyNotAllowed, self._snapshot,
            _instance('live-backup', 'live-backup,cold-direct-extract'))
        self.assertIn('Allowed strategies: live-backup.', str(e))
        self.captured.assert_not_called()

    def test_image_narrowing_picks_the_strategy(self):
        # All four apply to this request (the checks are mocked): the
        # image's narrowing alone decides.
        instance = _instance(None, 'cold-direct-extract')
        registry = self.driver.policy_registry(instance)
        self.assertEqual(['cold-direct-extract'], registry.names())

    def _fake_capture(self, tmp, props_seen):
        out = os.path.join(tmp, 'image.qcow2')
        with open(out, 'wb') as f:
            f.write(b'data')

        @contextlib.contextmanager
        def captured(request, strategy, power, image_id=None):
            run = runner.SnapshotRun(request, strategy)
            run.point_in_time = 1764638400.5
            yield out, run

        return captured

    def test_our_upload_carries_the_provenance(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        instance = _instance('live-backup')
        # Inherited from the image the server booted: must be replaced.
        self.build.return_value = fakes.make_request(instance=instance)
        self.captured.side_effect = self._fake_capture(tmp, None)
        with mock.patch.object(
                self.driver, '_create_snapshot_metadata',
                return_value={'properties': {
                    'snapdriver_strategy': 'cold-direct-extract',
                    'snapdriver_consistency': 'cold',
                    'snapdriver_strategies': 'live-backup'}}), \
                mock.patch('snapdriver.strategies.live_backup.LiveBackup.'
                           'unsupported_reason', return_value=None):
            self._snapshot(instance)
        self.image_api.update.assert_called_once()
        metadata = self.image_api.update.call_args[0][2]
        self.assertEqual({
            'snapdriver_strategy': 'live-backup',
            'snapdriver_point_in_time': '2025-12-02T01:20:00.500000+00:00',
            'snapdriver_consistency': 'crash',
            'snapdriver_guest_downtime_ms': '0',
            'snapdriver_strategies': 'live-backup',
        }, metadata['properties'])

    @mock.patch.object(libvirt_driver.LibvirtDriver,
                       '_create_snapshot_metadata')
    def test_stock_upload_says_unknown(self, mock_meta):
        mock_meta.side_effect = lambda *a: {'properties': {
            'snapdriver_strategy': 'live-backup',
            'snapdriver_point_in_time': '2020-01-01T00:00:00+00:00'}}
        instance = _instance('stock')
        self.build.return_value = fakes.make_request(instance=instance,
                                                     driver=self.driver)
        seen = []

        def stock_snapshot(context, inst, image_id, update):
            seen.append(self.driver._create_snapshot_metadata(
                inst.image_meta, inst, 'raw', 'snap'))

        with mock.patch.object(libvirt_driver.LibvirtDriver, 'snapshot',
                               side_effect=stock_snapshot):
            self._snapshot(instance)
        self.assertEqual({'snapdriver_strategy': 'stock',
                          'snapdriver_point_in_time': 'unknown',
                          'snapdriver_consistency': 'unknown',
                          'snapdriver_guest_downtime_ms': 'unknown'},
                         seen[0]['properties'])
        # Only during that snapshot.
        self.assertEqual({}, self.driver._delegated_snapshots)
        self.assertEqual(
            '2020-01-01T00:00:00+00:00',
            self.driver._create_snapshot_metadata(
                None, instance, 'raw', 'x')['properties'][
                    'snapdriver_point_in_time'])
