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

"""Several instances of one host snapshotted at once.

Nova's compute manager admits concurrent snapshots through its
``_snapshot_semaphore`` (of ``[DEFAULT] max_concurrent_snapshots`` in
eventlet mode) and its ``LONG_TASK`` executor (the limit in native
threading mode); the tests do the same
(:class:`snapdriver.bench_load.ComputeManagerAdmission`) with real domains
and the default strategy order, and check
every image, and that one snapshot failing leaves its neighbours alone
(their jobs, files and images).
"""

import contextlib
import os

import fixtures
import libvirt
from oslo_utils import units
import testscenarios

from snapdriver import bench_load
from snapdriver import exception
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real

load_tests = testscenarios.load_tests_apply_scenarios


class ConcurrentInstancesTestCase(base.DriverTestCase):

    scenarios = [('running', {'state': 'running'}),
                 ('mixed', {'state': None})]

    N = 4

    def setUp(self):
        super().setUp()
        self.flags(max_concurrent_snapshots=self.N)
        states = ['running', 'paused', 'shutoff', 'running']
        self.domains = [
            self.make_domain(self.state or states[i % len(states)],
                             images=self.useFixture(real.DiskImages(
                                 virtual_size=64 * units.Mi,
                                 data_size=16 * units.Mi)))
            for i in range(self.N)]

    def snapshot_all(self, touches=None):
        """Snapshot every domain at once, admitted as Nova's manager does.

        :param touches: a :class:`bench_load.Touches` to attribute each
            thread's job aborts and file removals to its domain.
        :returns: {index: the exception raised, or None}
        """
        admission = bench_load.ComputeManagerAdmission()
        self.addCleanup(admission.close)
        self.assertGreaterEqual(admission.limit, self.N)

        def one(i):
            acting = (touches.acting_for(self.domains[i].uuid)
                      if touches else contextlib.nullcontext())
            with acting:
                self.snapshot(self.domains[i], image_id='image-%d' % i)

        futures = [admission.submit(one, i) for i in range(self.N)]
        return {i: future.result(600)[2] for i, future in enumerate(futures)}

    def assert_neighbour_done(self, i):
        domain = self.domains[i]
        self.assert_image_equals_disk('image-%d' % i, 'qcow2', domain)
        self.assertTrue(domain.is_persistent())
        self.assertFalse(domain.has_managed_save())
        if domain.state() != 'shutoff':
            self.assertEqual({}, domain.dom.blockJobInfo('vda', 0))

    def test_all_at_once(self):
        states = [d.state() for d in self.domains]
        results = self.snapshot_all()
        self.assertEqual({i: None for i in range(self.N)}, results)
        for i in range(self.N):
            self.assert_neighbour_done(i)
            self.assertEqual(states[i], self.domains[i].state())
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_one_fails_neighbours_unaffected(self):
        victim = self.domains[0]
        states = [d.state() for d in self.domains]
        real_begin = libvirt.virDomain.backupBegin
        real_copy = libvirt.virDomain.blockCopy

        def fail_for_victim(real_call):
            def call(dom, *args, **kwargs):
                if dom.UUIDString() == victim.uuid:
                    raise libvirt.libvirtError('injected failure')
                return real_call(dom, *args, **kwargs)
            return call

        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.backupBegin', fail_for_victim(real_begin)))
        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.virDomain.blockCopy', fail_for_victim(real_copy)))
        results = self.snapshot_all()
        self.assertIsInstance(results[0], exception.BlockJobFailed)
        self.assertNotIn('image-0', self.images.uploads)
        self.assertEqual(states[0], victim.state())
        for i in range(1, self.N):
            self.assertIsNone(results[i], 'neighbour %d failed' % i)
            self.assert_neighbour_done(i)
            self.assertEqual(states[i], self.domains[i].state())
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_one_times_out_mid_job_neighbours_unaffected(self):
        """Its cleanup aborts its own job, never a neighbour's."""
        victim = self.domains[0]
        states = [d.state() for d in self.domains]
        touches = bench_load.Touches(self.snapshots_directory)
        with touches.spying(), bench_load.injected('timeout', victim.uuid):
            results = self.snapshot_all(touches)
        self.assertIsInstance(results[0], exception.BlockJobTimeout)
        self.assertEqual([], touches.foreign)
        self.assertNotIn('image-0', self.images.uploads)
        self.assertEqual(states[0], victim.state())
        for i in range(1, self.N):
            self.assertIsNone(results[i], 'neighbour %d failed' % i)
            self.assert_neighbour_done(i)
        self.assertEqual([], os.listdir(self.snapshots_directory))
