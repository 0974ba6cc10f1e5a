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

"""Smoke tests of ``python -m snapdriver.bench``: on a tiny disk, and one
live snapshot of the writer guest (``--writer``).

The benchmark runs in its own process (it sets Nova's global options and
signal handlers); only the shape of its JSON and the content checks are
asserted, never timings.
"""

import json
import os
import subprocess
import sys

import fixtures
import libvirt
from oslotest import base

from snapdriver import bench
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import writer_guest

#: The strategies the benchmark must run (besides stock), each installed.
EXPECTED = ('cold-direct-extract', 'cold-internal', 'live-backup',
            'live-shallow-rebase')


class BenchSmokeTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        reason = real.libvirt_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.out = self.useFixture(fixtures.TempDir()).path

    def _domains(self):
        conn = libvirt.open(real.LIBVIRT_URI)
        try:
            return {d.name() for d in conn.listAllDomains(0)
                    if d.name().startswith('snapdriver-bench-')}
        finally:
            conn.close()

    def test_tiny_run_verifies_every_case(self):
        before = self._domains()
        cmd = [sys.executable, '-m', 'snapdriver.bench',
               '--sizes', '0.0625', '--fill', '0.25', '--repeat', '1',
               '--output-dir', self.out, '--no-chart']
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=600)
        self.assertEqual(0, proc.returncode, proc.stderr[-4000:])

        with open(os.path.join(self.out, 'results.json')) as f:
            result = json.load(f)
        runs = result['runs']
        labels = {r['label'] for r in runs}
        self.assertIn('stock-live', labels)
        self.assertIn('stock-cold', labels)
        installed = bench.installed_strategies()
        for name in EXPECTED:
            self.assertIn(name, installed)
            self.assertIn(name, labels)
        self.assertNotIn('stock', labels)
        applicable = [r for r in runs if not r.get('not_applicable')]
        self.assertTrue(applicable)
        for run in applicable:
            self.assertTrue(run['verified'], run)
            self.assertGreater(run['uploaded_bytes'], 0)
            self.assertGreater(run['samples'], 0)
        rows = [r for r in result['rows'] if not r.get('reference')]
        self.assertTrue(all(r['ok'] == r['runs'] for r in rows
                            if not r.get('not_applicable')))
        refs = {r['label'] for r in result['rows'] if r.get('reference')}
        self.assertEqual({'convert-raw', 'convert-qcow2', 'read-data'},
                         refs)
        with open(os.path.join(self.out, 'results.md')) as f:
            self.assertIn('| stock-live | running |', f.read())
        # Every throwaway domain is gone. Only new names count: libvirtd is
        # shared, and another run's domains may come and go meanwhile.
        self.assertEqual(set(), self._domains() - before)

    def test_writer_mode_one_live_run(self):
        reason = writer_guest.guest_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.assertIn('live-backup', bench.installed_strategies())
        cmd = [sys.executable, '-m', 'snapdriver.bench', '--writer',
               '--strategies', 'live-backup', '--no-stock', '--repeat', '1',
               '--writer-blocks', '20', '--output-dir', self.out]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=600)
        self.assertEqual(0, proc.returncode, proc.stderr[-4000:])

        with open(os.path.join(self.out, 'writer-results.json')) as f:
            result = json.load(f)
        self.assertEqual('writer', result['settings']['mode'])
        [run] = result['runs']
        self.assertEqual('live-backup', run['label'])
        self.assertTrue(run['verified'], run)
        # A crash-consistent prefix holding every write reported before
        # the snapshot began; the writer went on after it.
        self.assertGreaterEqual(run['seq_before'], 20)
        self.assertGreaterEqual(run['image_n'], run['seq_before'])
        self.assertGreater(run['disk_n_after'], run['image_n'])
        self.assertEqual(['running'], run['states_seen'])
        self.assertIsNotNone(run['frozen_record'])
        self.assertEqual(['freeze', 'thaw'],
                         [call for call, _count in run['fs_calls']])
        [row] = result['rows']
        self.assertEqual((1, 1), (row['ok'], row['runs']))
        with open(os.path.join(self.out, 'writer-results.md')) as f:
            self.assertIn('| live-backup | 1/1 |', f.read())
        # The guest is gone (other tests may run guests meanwhile).
        self.assertTrue(run['domain'].startswith(writer_guest.DOMAIN_PREFIX))
        conn = libvirt.open(real.LIBVIRT_URI)
        try:
            self.assertNotIn(run['domain'],
                             {d.name() for d in conn.listAllDomains(0)})
        finally:
            conn.close()
