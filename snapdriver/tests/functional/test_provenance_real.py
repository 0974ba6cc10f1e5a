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

"""The provenance of live snapshots of a real, writing guest.

``LibvirtSnapshotDriver.snapshot`` takes the snapshot of a
:class:`writer_guest.WriterGuest`; the upload's metadata must say which
strategy, which consistency, no downtime, and a point in time that the
image's content agrees with: every block the writer reported on the
console *before* that instant (host clock) is in the image. A point in
time stamped later than the real one (at the end of the copy, say) fails
this as soon as the writer reports a block between the two.
"""

import datetime
import threading
import time

import fixtures
import testscenarios

from snapdriver import strategies
from snapdriver.tests.functional import base
from snapdriver.tests.functional import test_consistency
from snapdriver.tests.functional import writer_guest

load_tests = testscenarios.load_tests_apply_scenarios


class ConsoleSampler(threading.Thread):
    """(host time, last reported writer seq), every ``interval`` s."""

    def __init__(self, guest, interval=0.02):
        super().__init__(daemon=True)
        self.guest = guest
        self.interval = interval
        self.samples = []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            seq = self.guest.latest_seq()
            self.samples.append((time.time(), seq))
            time.sleep(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()


class TestLiveProvenance(test_consistency.ConsistencyTestCase):

    scenarios = [(name, {'strategy': name})
                 for name in test_consistency.LIVE
                 if name in strategies.available_names()]

    def _snapshot(self, guest, image_id, image_properties):
        sampler = ConsoleSampler(guest)
        t0 = time.time()
        sampler.start()
        try:
            self.driver.snapshot(
                self.context,
                self.make_instance(guest, image_properties=image_properties),
                image_id, lambda task_state, expected_state=None: None)
        finally:
            sampler.stop()
        t1 = time.time()
        props = self.images.metadata[image_id]['properties']
        n, _run = writer_guest.scan_image(self.images.uploads[image_id],
                                          'qcow2')
        when = datetime.datetime.fromisoformat(
            props['snapdriver_point_in_time'])
        self.assertEqual(datetime.timezone.utc, when.tzinfo)
        when = when.timestamp()
        self.assertTrue(t0 <= when <= t1, (t0, when, t1))
        reported_before = max([seq for at, seq in sampler.samples
                               if at < when] or [0])
        reported_after = max(seq for at, seq in sampler.samples)
        self.numbers.setdefault('snapshots', []).append(dict(
            image_n=n, reported_before_point=reported_before,
            reported_at_end=reported_after,
            point_in_time_offset_s=round(when - t0, 3),
            snapshot_seconds=round(t1 - t0, 3)))
        self.assertLessEqual(reported_before, n,
                             'blocks reported before the point in time are '
                             'missing from the image')
        return props, n, reported_after

    def slow_down_after_capture(self, seconds):
        """Let the writer report for ``seconds`` after each capture.

        The console reports the writer's progress every 0.5 s, and the
        copy of the small test disk takes less: without a wait, a point
        in time stamped at the end of the capture instead of at the real
        instant would go unnoticed. The spy calls the real capture.
        """
        cls = type(self.strategy_object(self.strategy))
        real_capture = cls.capture

        def capture(strategy, request, out_path, run):
            real_capture(strategy, request, out_path, run)
            time.sleep(seconds)

        self.useFixture(fixtures.MonkeyPatch(
            '%s.%s.capture' % (cls.__module__, cls.__name__), capture))

    def test_live_provenance(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.slow_down_after_capture(1.5)
        guest = self.boot()
        guest.wait_for_seq(test_consistency.MIN_BLOCKS, timeout=120)

        props, n, reported_after = self._snapshot(guest, 'image-1', {})
        self.assertEqual(self.strategy, props['snapdriver_strategy'])
        self.assertEqual('crash', props['snapdriver_consistency'])
        self.assertEqual('0', props['snapdriver_guest_downtime_ms'])
        # The writer went on after the point in time: the image is not
        # the disk at the end of the snapshot.
        guest.wait_for_seq(n + 10, timeout=60)

        props, _n, _after = self._snapshot(
            guest, 'image-2', {'hw_qemu_guest_agent': True})
        self.assertEqual('filesystem-quiesced',
                         props['snapdriver_consistency'])
        self.assertEqual('0', props['snapdriver_guest_downtime_ms'])
        self.assertEqual(self.strategy, props['snapdriver_strategy'])


class TestColdProvenance(base.DriverTestCase):
    """Cold strategies on real domains (no guest OS needed)."""

    scenarios = [(name, {'strategy': name})
                 for name in test_consistency.COLD
                 if name in strategies.available_names()]

    def _snapshot(self, state):
        domain = self.make_domain(state)
        t0 = time.time()
        self.snapshot(domain, image_id=state)
        t1 = time.time()
        props = self.images.metadata[state]['properties']
        self.assertEqual(self.strategy, props['snapdriver_strategy'])
        self.assertEqual('cold', props['snapdriver_consistency'])
        when = datetime.datetime.fromisoformat(
            props['snapdriver_point_in_time'])
        self.assertEqual(datetime.timezone.utc, when.tzinfo)
        self.assertTrue(t0 <= when.timestamp() <= t1,
                        (t0, when.timestamp(), t1))
        return int(props['snapdriver_guest_downtime_ms']), t1 - t0

    def test_cold_provenance(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        downtime_ms, took = self._snapshot('running')
        # The managed save and the restore of a running guest.
        self.assertGreater(downtime_ms, 0)
        self.assertLessEqual(downtime_ms, took * 1000)
        downtime_ms, _took = self._snapshot('shutoff')
        self.assertEqual(0, downtime_ms)
