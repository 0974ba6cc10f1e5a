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

"""Smoke tests of ``python -m snapdriver.bench``: on a tiny Nova-shaped
disk at two fills, once with libvirt's default cache mode, and one live
snapshot of the writer guest (``--writer``).

The benchmark runs in its own process (it sets Nova's global options and
signal handlers); only the shape of its JSON and the content checks are
asserted, never timings.
"""

import json
import os
import subprocess
import sys
import tempfile

import fixtures
import libvirt
from nova.privsep import utils as privsep_utils
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
        refs = [r for r in result['rows'] if r.get('reference')]
        self.assertEqual({'convert-raw', 'convert-qcow2', 'convert-unsafe',
                          'convert-nova', 'read-data'},
                         {r['label'] for r in refs})
        self.assertTrue(all(r['ok'] == r['runs'] for r in refs))
        commands = {r['label']: r['command'] for r in refs}
        self.assertIn('-t writeback -W', commands['convert-qcow2'])
        # What our strategies run by default.
        self.assertIn('-t unsafe -W', commands['convert-unsafe'])
        # Nova's own conversion, -t none where O_DIRECT works.
        self.assertIn('-t %s -O qcow2' % self.direct_io_mode(),
                      commands['convert-nova'])
        # Nothing of the run is left: its lock directory neither.
        self.assertFalse(os.path.exists(result['settings']['lock_dir']))
        # Nova-shaped disks: the cache mode Nova's defaults give here.
        self.assertEqual('nova', result['settings']['cache_mode'])
        self.assertEqual(self.direct_io_mode(),
                         result['settings']['disk_cache'])
        for run in applicable:
            self.assertEqual(self.direct_io_mode(), run['disk_cache'])
            # The copy starts after the call and before the end.
            self.assertGreater(run['fixed_cost_seconds'], 0, run)
            self.assertLess(run['fixed_cost_seconds'],
                            run['total_seconds'], run)
        # The default strategy's fixed cost, step by step: its target
        # written and its job start among them, within the fixed cost; no
        # qemu-img create (the driver was prepared as nova-compute's start
        # prepares it: runner.prepare_targets); a running guest's disk is
        # described by libvirt (no qemu-img info) and the free space
        # checked against an in-process bound.
        self.assertEqual('live-backup',
                         result['settings']['default_strategy'])
        for run in applicable:
            if run['label'] != 'live-backup':
                continue
            steps = {s['step'] for s in run['fixed_cost_steps']}
            self.assertIn('empty qcow2 target written (qemu-img create '
                          'once per size)', steps)
            self.assertNotIn('qemu-img create', steps)
            self.assertIn('virDomainGetBlockInfo', steps)
            self.assertIn('live-backup.space_bound', steps)
            self.assertNotIn('qemu-img info', steps)
            self.assertNotIn('live-backup.space_needed', steps)
            self.assertIn('virDomainBackupBegin', steps)
            top = sum(s['ms'] for s in run['fixed_cost_steps']
                      if s['depth'] == 0)
            self.assertLessEqual(top, run['fixed_cost_seconds'] * 1000)

        with open(os.path.join(self.out, 'results.md')) as f:
            table = f.read()
        self.assertIn('| 0.0625 | 0.25 | stock-live | running |', table)
        self.assertIn('fixed cost ms', table)
        self.assertIn('| live-backup step (ms, median) |', table)
        # cold-internal's too: its fixed cost holds its downtime's steps.
        self.assertIn('| cold-internal step (ms, median) |', table)
        self.assertIn('| restore (virDomainCreate of the saved guest) |',
                      table)
        # Every throwaway domain is gone. Only this run's count: libvirtd
        # is shared, and another run's domains may come and go meanwhile.
        mine = {r['domain'] for r in runs}
        self.assertEqual(len(runs), len(mine))
        self.assertEqual(set(), self._domains() & mine)

    def direct_io_mode(self):
        """The cache mode Nova picks for the benchmark's directory."""
        parent = (real.DEFAULT_IMAGES_PARENT
                  if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                  else tempfile.gettempdir())
        probe = self.useFixture(fixtures.TempDir(rootdir=parent)).path
        return ('none' if privsep_utils.supports_direct_io(probe)
                else 'writeback')

    def test_two_fills_in_the_old_shape(self):
        cmd = [sys.executable, '-m', 'snapdriver.bench',
               '--sizes', '0.0625', '--fill', '0.25,0.75', '--repeat', '1',
               '--strategies', 'live-backup', '--no-stock',
               '--states', 'running', '--cache-mode', 'default',
               '--output-dir', self.out, '--no-chart']
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=600)
        self.assertEqual(0, proc.returncode, proc.stderr[-4000:])

        with open(os.path.join(self.out, 'results.json')) as f:
            result = json.load(f)
        # --cache-mode default: libvirt's, as before Nova-shaped disks.
        self.assertIsNone(result['settings']['disk_cache'])
        runs = result['runs']
        self.assertEqual([0.25, 0.75], [r['fill'] for r in runs])
        for run in runs:
            self.assertTrue(run['verified'], run)
            self.assertIsNone(run['disk_cache'])
        # The more data, the more uploaded.
        self.assertGreater(runs[1]['uploaded_bytes'],
                           runs[0]['uploaded_bytes'])
        self.assertEqual([0.25, 0.75], result['settings']['fills'])
        for fill in (0.25, 0.75):
            rows = {r['label']: r for r in result['rows']
                    if r['fill'] == fill}
            self.assertEqual({'live-backup', 'convert-raw', 'convert-qcow2',
                              'convert-unsafe', 'convert-nova', 'read-data'},
                             set(rows))
            self.assertEqual(1.0, rows['convert-qcow2']['x_convert'])
        with open(os.path.join(self.out, 'results.md')) as f:
            self.assertIn('| 0.0625 | 0.75 | live-backup | running |',
                          f.read())

    def test_bad_fill_is_refused(self):
        proc = subprocess.run(
            [sys.executable, '-m', 'snapdriver.bench', '--fill', '0.25,0.8',
             '--output-dir', self.out], capture_output=True, text=True,
            timeout=120)
        self.assertEqual(2, proc.returncode)
        self.assertIn('--fill values must be in (0, 0.75]', proc.stderr)

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
