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

"""A short sample of ``tox -e bench-box`` (snapdriver.box.bench).

One small disk with data in the image and in the overlay, stock Nova's
cold snapshot and the default live strategy, one snapshot each: the runs
are checked (image content, guest state), not timed against a target.
"""

import io
import types

import fixtures
from oslo_utils import units

from snapdriver.box import bench
from snapdriver.tests.box import base


class BenchSampleTest(base.BoxTestCase):

    def test_stock_cold_and_live_backup(self):
        args = types.SimpleNamespace(repeat=1, keep=True,
                                     cases=['stock-cold', 'live-backup'],
                                     box_dir=self.box.dir)
        run = bench.BoxBench(args, io.StringIO())
        run.box = self.box
        run.client = self.client
        run.sess = self.box.session()
        run.tmp = self.useFixture(fixtures.TempDir(
            rootdir=self.box.dir)).path
        layout = bench.Layout(512 * units.Mi, 0.25)
        server, digest, image_id = run.boot(layout)
        self.addCleanup(self._delete_quietly, server['id'])
        self.addCleanup(run.sess.delete, '/v2/images/%s' % image_id,
                        endpoint_filter=bench.IMAGE, raise_exc=False)
        # NOTE: the default order comes back when the test ends.
        self.addCleanup(self.box.restart_compute, None)
        run.references_for(server, layout, 0.5)
        for label, strategies, options in run.cases():
            self.box.restart_compute(strategies, options)
            run.runs.append(run.snapshot_once(label, server, layout, digest,
                                              0.5, 0))
        runs = {r['label']: r for r in run.runs}
        for r in run.runs:
            self.assertIsNone(r['error'], r['label'])
            self.assertTrue(r['verified'], r['label'])
        # Nova's cold snapshot: managed save, so the guest was down.
        self.assertEqual('stock', runs['stock-cold']['strategy_used'])
        self.assertGreater(runs['stock-cold']['downtime_seconds'], 0.1)
        self.assertIn('shutoff', runs['stock-cold']['states_seen'])
        self.assertEqual('live-backup',
                         runs['live-backup']['strategy_used'])
        self.assertEqual(0.0, runs['live-backup']['downtime_seconds'])
        self.assertEqual(0.0, runs['live-backup']['transient_seconds'])
        self.assertEqual(['running'], runs['live-backup']['states_seen'])
        # The image holds both data regions: at least their size.
        for r in run.runs:
            self.assertGreaterEqual(r['image_bytes'], layout.data_bytes)
        self.assertEqual(['convert-nova', 'convert-qcow2', 'convert-unsafe'],
                         sorted(r['label'] for r in run.references))
        # The disk is read while its guest runs.
        self.assertTrue(all(' -U ' in r['command'] for r in run.references))
        rows = bench.aggregate(run.runs, run.references)
        self.assertEqual(2, len(rows))
        self.assertIn('| 0.5 | 0.25 | live-backup | 1/1 |',
                      bench.markdown(rows, run.references))
