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

"""guest_state.held(): the guest always comes back (logic only)."""

import os
import time
import types
from unittest import mock

import fixtures
from nova.compute import power_state
from oslotest import base

from snapdriver import guest_state
from snapdriver import journal
from snapdriver.strategies import base as strategy_base
from snapdriver.tests.unit import fakes


class _Power(object):
    def __init__(self, suspend_error=None):
        self.calls = []
        self.suspend_error = suspend_error

    def suspend(self):
        self.calls.append('suspend')
        if self.suspend_error is not None:
            raise self.suspend_error

    def restore(self, paused):
        self.calls.append(('restore', paused))


class HeldTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.guest = mock.Mock()
        self.guest.is_active.return_value = False
        # held() journals the managed save in the snapshots directory.
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.request = fakes.make_request(
            guest=self.guest, snapshots_directory=self.snapdir)

    def test_managed_save_is_journaled_while_held(self):
        with self._hold(_Power()):
            self.assertEqual(
                ['%s.json' % self.request.uuid],
                os.listdir(journal.directory(self.snapdir)))
        self.assertEqual([], os.listdir(self.snapdir))

    def _hold(self, power, request=None, needed=strategy_base.GUEST_QUIET):
        return guest_state.held(request or self.request, needed, power)

    def test_running_guest_is_saved_and_restored(self):
        power = _Power()
        with self._hold(power) as record:
            self.assertEqual(['suspend'], power.calls)
        self.assertEqual(['suspend', ('restore', False)], power.calls)
        self.assertIsNotNone(record.suspended_at)
        self.assertIsNotNone(record.restored_at)

    def test_downtime_spans_the_save_to_the_restore(self):
        clock = [100.0]

        class _SlowPower(_Power):
            def suspend(self):
                super().suspend()
                clock[0] += 1.0

            def restore(self, paused):
                clock[0] += 0.25
                super().restore(paused)

        # Only guest_state's view of the clock; time.monotonic stays real.
        self.useFixture(fixtures.MockPatch(
            'snapdriver.guest_state.time',
            new=types.SimpleNamespace(monotonic=lambda: clock[0],
                                      time=time.time)))
        with self._hold(_SlowPower()) as record:
            clock[0] += 2.0
        # The managed save (1 s), the capture (2 s) and the restore.
        self.assertEqual(3.25, record.downtime)

    def test_paused_guest_is_restored_paused(self):
        power = _Power()
        req = fakes.replace(self.request, power_state=power_state.PAUSED)
        with self._hold(power, req):
            pass
        self.assertEqual(('restore', True), power.calls[-1])

    def test_shut_off_guest_is_left_alone(self):
        power = _Power()
        req = fakes.replace(self.request, power_state=power_state.SHUTDOWN)
        with self._hold(power, req):
            pass
        self.assertEqual([], power.calls)

    def test_live_strategy_never_stops_the_guest(self):
        power = _Power()
        with self._hold(power, needed=strategy_base.GUEST_LIVE):
            pass
        self.assertEqual([], power.calls)

    def test_failure_inside_restores_then_reraises(self):
        power = _Power()

        def _fail():
            with self._hold(power):
                raise ValueError('capture failed')
        self.assertRaises(ValueError, _fail)
        self.assertEqual(['suspend', ('restore', False)], power.calls)

    def test_interrupt_inside_restores_then_reraises(self):
        power = _Power()

        def _interrupt():
            with self._hold(power):
                raise KeyboardInterrupt()
        self.assertRaises(KeyboardInterrupt, _interrupt)
        self.assertEqual(['suspend', ('restore', False)], power.calls)

    def test_interrupt_during_the_save_restores_a_saved_guest(self):
        power = _Power(suspend_error=KeyboardInterrupt())
        self.guest.is_active.return_value = False

        def _run():
            with self._hold(power):
                self.fail('must not run the capture')
        self.assertRaises(KeyboardInterrupt, _run)
        self.assertEqual(['suspend', ('restore', False)], power.calls)

    def test_release_restores_once_before_the_block_ends(self):
        power = _Power()
        with self._hold(power) as record:
            record.release()
            self.assertEqual(['suspend', ('restore', False)], power.calls)
            self.assertIsNotNone(record.restored_at)
            record.release()
        self.assertEqual(['suspend', ('restore', False)], power.calls)

    def test_failure_after_release_does_not_restore_again(self):
        power = _Power()

        def _fail():
            with self._hold(power) as record:
                record.release()
                raise ValueError('extract failed')
        self.assertRaises(ValueError, _fail)
        self.assertEqual(['suspend', ('restore', False)], power.calls)

    def test_failed_release_is_not_tried_again(self):
        power = _Power()
        power.restore = mock.Mock(side_effect=RuntimeError('restore failed'))

        def _run():
            with self._hold(power) as record:
                record.release()
        self.assertRaises(RuntimeError, _run)
        power.restore.assert_called_once_with(False)

    def test_release_without_a_managed_save_does_nothing(self):
        power = _Power()
        req = fakes.replace(self.request, power_state=power_state.SHUTDOWN)
        with self._hold(power, req) as record:
            record.release()
        self.assertEqual([], power.calls)

    def test_failed_save_of_a_running_guest_is_not_restored(self):
        power = _Power(suspend_error=RuntimeError('managedSave failed'))
        self.guest.is_active.return_value = True

        def _run():
            with self._hold(power):
                self.fail('must not run the capture')
        self.assertRaises(RuntimeError, _run)
        self.assertEqual(['suspend'], power.calls)
