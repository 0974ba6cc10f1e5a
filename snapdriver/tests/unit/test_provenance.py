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

"""Provenance image properties (snapdriver/provenance.py)."""

import datetime
import time

from nova.compute import power_state
from oslotest import base

from snapdriver import provenance
from snapdriver import runner
from snapdriver.strategies import cold_direct
from snapdriver.strategies import live_backup
from snapdriver.strategies import live_shallow_rebase
from snapdriver.strategies import stock
from snapdriver.tests.unit import fakes


def _strategy(cls, name):
    strategy = cls()
    strategy.name = name
    return strategy


def _parse(value):
    return datetime.datetime.fromisoformat(value)


class PropertiesTestCase(base.BaseTestCase):

    def test_live_backup_crash_consistent(self):
        request = fakes.make_request()
        run = runner.SnapshotRun(
            request, _strategy(live_backup.LiveBackup, 'live-backup'))
        run.point_in_time = 1764638400.25
        props = provenance.properties(run)
        self.assertEqual({
            'snapdriver_strategy': 'live-backup',
            'snapdriver_point_in_time': '2025-12-02T01:20:00.250000+00:00',
            'snapdriver_consistency': 'crash',
            'snapdriver_guest_downtime_ms': '0',
        }, props)
        self.assertEqual(datetime.timezone.utc,
                         _parse(props['snapdriver_point_in_time']).tzinfo)

    def test_live_quiesced(self):
        run = runner.SnapshotRun(
            fakes.make_request(),
            _strategy(live_shallow_rebase.LiveShallowRebase,
                      'live-shallow-rebase'))
        run.point_in_time = time.time()
        run.quiesce['frozen_seconds'] = 0.004
        props = provenance.properties(run)
        self.assertEqual('filesystem-quiesced',
                         props['snapdriver_consistency'])
        self.assertEqual('live-shallow-rebase', props['snapdriver_strategy'])

    def test_live_no_filesystem_frozen_is_crash_consistent(self):
        run = runner.SnapshotRun(
            fakes.make_request(),
            _strategy(live_backup.LiveBackup, 'live-backup'))
        run.point_in_time = time.time()
        run.quiesce.update(frozen_seconds=0.002, frozen_filesystems=0)
        props = provenance.properties(run)
        self.assertEqual('crash', props['snapdriver_consistency'])

    def test_cold_running_guest_is_the_end_of_the_managed_save(self):
        run = runner.SnapshotRun(
            fakes.make_request(),
            _strategy(cold_direct.ColdDirectExtract, 'cold-direct-extract'))
        run.guest.suspended_at = time.monotonic() - 1.5
        run.guest.saved_wall = 1764638400.0
        run.guest.restored_at = run.guest.suspended_at + 1.234
        props = provenance.properties(run)
        self.assertEqual('cold', props['snapdriver_consistency'])
        self.assertEqual('1234', props['snapdriver_guest_downtime_ms'])
        self.assertEqual('2025-12-02T01:20:00+00:00',
                         props['snapdriver_point_in_time'])

    def test_cold_shut_off_guest_is_the_start_of_the_snapshot(self):
        before = time.time()
        run = runner.SnapshotRun(
            fakes.make_request(power_state=power_state.SHUTDOWN),
            _strategy(cold_direct.ColdDirectExtract, 'cold-direct-extract'))
        props = provenance.properties(run)
        when = _parse(props['snapdriver_point_in_time']).timestamp()
        self.assertTrue(before - 0.01 <= when <= time.time() + 0.01, when)
        self.assertEqual('0', props['snapdriver_guest_downtime_ms'])
        self.assertEqual('cold', props['snapdriver_consistency'])

    def test_live_strategy_without_a_point_in_time_says_unknown(self):
        run = runner.SnapshotRun(
            fakes.make_request(),
            _strategy(live_backup.LiveBackup, 'live-backup'))
        self.assertEqual('unknown',
                         provenance.properties(run)[
                             'snapdriver_point_in_time'])

    def test_delegated(self):
        self.assertEqual(
            {'snapdriver_strategy': 'stock',
             'snapdriver_point_in_time': 'unknown',
             'snapdriver_consistency': 'unknown',
             'snapdriver_guest_downtime_ms': 'unknown'},
            provenance.delegated('stock'))

    def test_stamp_overwrites_inherited_values(self):
        metadata = {'properties': {
            'snapdriver_strategy': 'cold-direct-extract',
            'snapdriver_point_in_time': '2020-01-01T00:00:00+00:00',
            'snapdriver_strategies': 'live-backup',
            'hw_disk_bus': 'virtio'}}
        provenance.stamp(metadata, provenance.delegated('stock'))
        self.assertEqual('stock', metadata['properties'][
            'snapdriver_strategy'])
        self.assertEqual('unknown', metadata['properties'][
            'snapdriver_point_in_time'])
        # What the user set follows the image.
        self.assertEqual('live-backup', metadata['properties'][
            'snapdriver_strategies'])


class ExpectedTestCase(base.BaseTestCase):

    def test_live_running(self):
        exp = provenance.expected(
            fakes.make_request(),
            _strategy(live_backup.LiveBackup, 'live-backup'))
        self.assertEqual('start of the backup job',
                         exp['snapdriver_point_in_time'])
        self.assertEqual('crash', exp['snapdriver_consistency'])
        self.assertEqual('0', exp['snapdriver_guest_downtime_ms'])

    def test_live_with_agent(self):
        exp = provenance.expected(
            fakes.make_request(image_properties={
                'hw_qemu_guest_agent': True}),
            _strategy(live_shallow_rebase.LiveShallowRebase, 'l'))
        self.assertTrue(exp['snapdriver_consistency'].startswith(
            'filesystem-quiesced'))

    def test_cold_running(self):
        exp = provenance.expected(
            fakes.make_request(),
            _strategy(cold_direct.ColdDirectExtract, 'cold-direct-extract'))
        self.assertEqual('cold', exp['snapdriver_consistency'])
        self.assertEqual('end of the managed save',
                         exp['snapdriver_point_in_time'])

    def test_stock(self):
        exp = provenance.expected(fakes.make_request(),
                                  _strategy(stock.Stock, 'stock'))
        self.assertEqual(provenance.delegated('stock'), exp)
