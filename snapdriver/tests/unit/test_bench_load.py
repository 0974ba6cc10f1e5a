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

"""The logic of the load benchmark that needs no host: spies, admission,
summary.
"""

import os
import shutil
import tempfile
import threading
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from snapdriver import bench_load
from snapdriver import conf
from snapdriver import runner

UUID_A = 'aaaaaaaa-0000-4000-8000-000000000001'
UUID_B = 'bbbbbbbb-0000-4000-8000-000000000002'


class TouchesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.touches = bench_load.Touches(self.snapdir)

    def workdir(self, uuid):
        request = mock.Mock(uuid=uuid)
        return tempfile.mkdtemp(prefix=runner.workdir_prefix(request),
                                dir=self.snapdir)

    def remove_as(self, actor, path):
        def remove():
            with self.touches.acting_for(actor):
                shutil.rmtree(path)
        thread = threading.Thread(target=remove)
        with self.touches.spying():
            thread.start()
            thread.join()

    def test_own_workdir_is_not_foreign(self):
        path = self.workdir(UUID_A)
        self.remove_as(UUID_A, path)
        self.assertFalse(os.path.exists(path))
        self.assertEqual([], self.touches.foreign)
        self.assertIn((UUID_A, UUID_A, 'rmtree %s' % path),
                      self.touches.removals)

    def test_neighbours_workdir_is_foreign(self):
        path = self.workdir(UUID_B)
        self.remove_as(UUID_A, path)
        self.assertIn({'actor': UUID_A, 'target': UUID_B,
                       'what': 'rmtree %s' % path}, self.touches.foreign)
        # rmtree's own rmdir of the top directory counts too.
        self.assertEqual({(UUID_A, UUID_B)},
                         {(f['actor'], f['target'])
                          for f in self.touches.foreign})

    def test_spies_removed_after(self):
        real_rmtree = shutil.rmtree
        with self.touches.spying():
            self.assertIsNot(real_rmtree, shutil.rmtree)
        self.assertIs(real_rmtree, shutil.rmtree)


class AdmissionTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(conf.CONF))

    def limit(self, threading_mode, **flags):
        self.conf.config(**flags)
        with mock.patch('nova.utils.concurrency_mode_threading',
                        return_value=threading_mode):
            admission = bench_load.ComputeManagerAdmission()
            admission.close()
        return admission.limit

    def test_threading_mode_limit_is_the_long_task_pool(self):
        # Nova 34's defaults: 10 builds, 5 snapshots -> one limit of 10.
        self.assertEqual(10, self.limit(True))
        self.assertEqual(12, self.limit(True, max_concurrent_snapshots=12))

    def test_eventlet_mode_limit_is_the_semaphore(self):
        self.assertEqual(5, self.limit(False))
        self.assertEqual(2, self.limit(False, max_concurrent_snapshots=2))

    def test_queued_beyond_the_limit(self):
        self.conf.config(max_concurrent_snapshots=1,
                         max_concurrent_builds=1)
        admission = bench_load.ComputeManagerAdmission()
        self.addCleanup(admission.close)
        release = threading.Event()
        first = admission.submit(release.wait, 10)
        second = admission.submit(lambda: None)
        self.assertFalse(second.done())
        release.set()
        self.assertIsNone(first.result(10)[2])
        self.assertIsNone(second.result(10)[2])


class SummarizeTestCase(base.BaseTestCase):

    @staticmethod
    def run_of(n, failure, seconds, errors=()):
        members = []
        for i, s in enumerate(seconds):
            error = 'Boom' if i in errors else None
            members.append({'index': i, 'seconds': s, 'wait_seconds': 0.0,
                            'error': error, 'problems': [],
                            'verified': error is None})
        return {'n': n, 'failure': failure, 'victim': 0 if failure else None,
                'writers': n, 'idle': 0, 'error': None, 'ok': True,
                'wall_seconds': max(seconds), 'members': members}

    def test_growth_and_victim(self):
        rows = bench_load.summarize([
            self.run_of(1, None, [1.0]),
            self.run_of(2, None, [2.0, 3.0]),
            self.run_of(2, 'upload', [0.5, 2.0], errors=(0,)),
        ])
        self.assertEqual([1.0, 2.5, 2.0],
                         [r['median_seconds'] for r in rows])
        self.assertEqual([1.0, 2.5, 2.0], [r['vs_first'] for r in rows])
        self.assertEqual((1, 1, 1), (rows[2]['verified'],
                                     rows[2]['expected'],
                                     rows[2]['victims_clean']))
