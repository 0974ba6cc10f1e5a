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

"""The benchmark's bookkeeping: the fixed-cost tracer and the rows."""

import contextlib
import threading
import types
from unittest import mock

from oslotest import base

from snapdriver import bench


class _Target(object):
    """Stands for a module whose functions the tracer wraps."""

    @staticmethod
    def outer(tracer_target):
        return tracer_target.inner() + 1

    @staticmethod
    def inner():
        return 41

    @staticmethod
    @contextlib.contextmanager
    def held():
        yield 'value'

    def method(self, n):
        return self.inner() + n + 1


class TracerTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tracer = bench.Tracer()
        self.steps = [
            (_Target, 'outer', 'outer', False),
            (_Target, 'inner', lambda: 'inner', False),
            (_Target, 'held', 'held', True),
        ]

    def test_nested_calls_get_their_depth_and_originals_come_back(self):
        original = _Target.__dict__['outer']
        with self.tracer.active(self.steps):
            self.assertEqual(42, _Target.outer(_Target))
        self.assertIs(original, _Target.__dict__['outer'])
        self.assertEqual([('inner', 1), ('outer', 0)],
                         [(e[0], e[1]) for e in self.tracer.events])

    def test_methods_called_through_an_instance(self):
        # cold-internal's steps: a static method and a method, both
        # called as self.name(...).
        self.steps = [(_Target, 'inner', 'inner', False),
                      (_Target, 'method', 'method', False)]
        original = _Target.__dict__['inner']
        with self.tracer.active(self.steps):
            self.assertEqual(41, _Target().inner())
            self.assertEqual(43, _Target().method(1))
        self.assertIs(original, _Target.__dict__['inner'])
        self.assertEqual(['inner', 'inner', 'method'],
                         sorted(e[0] for e in self.tracer.events))

    def test_a_context_manager_counts_its_enter_only(self):
        with self.tracer.active(self.steps):
            with _Target.held() as value:
                self.assertEqual('value', value)
                _Target.inner()
        self.assertEqual([('held', 0), ('inner', 0)],
                         [(e[0], e[1]) for e in self.tracer.events])
        held, inner = self.tracer.events
        self.assertLessEqual(held[3], inner[2])

    def test_other_threads_are_not_traced(self):
        with self.tracer.active(self.steps):
            worker = threading.Thread(target=_Target.inner)
            worker.start()
            worker.join()
        self.assertEqual([], self.tracer.events)

    def test_breakdown_keeps_what_began_before_the_end_clipped(self):
        self.tracer.events = [
            ('a', 0, 1.0, 1.5), ('b', 1, 1.1, 1.2), ('a', 0, 2.0, 2.25),
            ('c', 0, 2.5, 4.0), ('d', 0, 3.5, 3.6), ('e', 0, 0.5, 0.6)]
        self.assertEqual([
            {'step': 'a', 'depth': 0, 'calls': 2, 'ms': 750.0},
            {'step': 'b', 'depth': 1, 'calls': 1, 'ms': 100.0},
            {'step': 'c', 'depth': 0, 'calls': 1, 'ms': 500.0}],
            [dict(s, ms=round(s['ms'], 6))
             for s in self.tracer.breakdown(1.0, 3.0)])


def _run(label, fill, total, upload, fixed, steps=None):
    return {'size_gib': 1, 'fill': fill, 'label': label, 'state': 'running',
            'verified': True, 'error': None, 'image_format': 'qcow2',
            'total_seconds': total, 'upload_seconds': upload,
            'extract_seconds': total - upload, 'fixed_cost_seconds': fixed,
            'fixed_cost_steps': steps, 'downtime_sampled': 0.0}


def _ref(label, fill, seconds):
    return {'size_gib': 1, 'fill': fill, 'label': label, 'seconds': seconds,
            'verified': True, 'bytes': 1, 'command': 'qemu-img convert'}


class AggregateTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cases = [bench.Case('stock-live', 'running', stock_mode='live',
                                 live=True),
                      bench.Case('live-backup', 'running',
                                 strategy='live-backup', live=True)]
        step = {'step': 'qemu-img info', 'depth': 1, 'calls': 1}
        self.bench = types.SimpleNamespace(
            args=types.SimpleNamespace(image_format='qcow2'),
            exit_latency=1.0,
            runs=[_run('stock-live', 0.25, 4.0, 1.0, 0.5),
                  _run('live-backup', 0.25, 2.0, 0.5, 0.1,
                       [dict(step, ms=30.0)]),
                  _run('live-backup', 0.25, 2.2, 0.5, 0.2, []),
                  _run('live-backup', 0.75, 5.0, 1.0, 0.3)],
            references=[_ref('convert-qcow2', 0.25, 1.0),
                        _ref('convert-nova', 0.25, 2.0),
                        _ref('convert-qcow2', 0.75, 2.0)])

    def _rows(self):
        return {(r['fill'], r['label']): r
                for r in bench.aggregate(self.bench, self.cases)}

    def test_rows_per_fill_against_the_fastest_convert_of_that_fill(self):
        rows = self._rows()
        self.assertEqual(
            {(0.25, 'stock-live'), (0.25, 'live-backup'),
             (0.25, 'convert-qcow2'), (0.25, 'convert-nova'),
             (0.75, 'live-backup'), (0.75, 'convert-qcow2')}, set(rows))
        self.assertAlmostEqual(1.6, rows[(0.25, 'live-backup')]['x_convert'])
        self.assertAlmostEqual(2.0, rows[(0.75, 'live-backup')]['x_convert'])
        self.assertAlmostEqual(2.0, rows[(0.25, 'convert-nova')]['x_convert'])
        self.assertAlmostEqual(0.15,
                               rows[(0.25, 'live-backup')]
                               ['fixed_cost_seconds'])
        self.assertAlmostEqual(0.525,
                               rows[(0.25, 'live-backup')]['x_stock'])

    def test_a_step_missing_from_a_run_counts_as_zero(self):
        [step] = self._rows()[(0.25, 'live-backup')]['fixed_cost_steps']
        self.assertEqual(15.0, step['ms'])

    def test_tables_show_fill_fixed_cost_and_steps(self):
        rows = bench.aggregate(self.bench, self.cases)
        table = bench.markdown(rows)
        self.assertIn('| 1 | 0.75 | live-backup | running | 1/1 | 5.00 | '
                      '1.00 | 4.00 | 2.00 | - | 300 |', table)
        steps = bench.markdown_fixed_cost(rows, 'live-backup')
        self.assertIn('| &nbsp;&nbsp;qemu-img info | 15.0 |', steps)
        self.assertIn('| **fixed cost** | 150 |', steps)


class ParseArgsTestCase(base.BaseTestCase):

    @mock.patch('sys.stderr')
    def test_fill_beyond_the_layout_is_refused(self, stderr):
        self.assertRaises(SystemExit, bench.parse_args,
                          ['--fill', '0.25,0.8'])

    @mock.patch.object(bench, 'installed_strategies',
                       return_value={'live-backup': 'live'})
    def test_lists_of_sizes_and_fills(self, installed):
        args = bench.parse_args(['--sizes', '1,8', '--fill', '0.25,0.75'])
        self.assertEqual([1.0, 8.0], args.size_list)
        self.assertEqual([0.25, 0.75], args.fill_list)
        self.assertEqual('nova', args.cache_mode)


class ReferenceCommandsTestCase(base.BaseTestCase):
    """The bare converts both benchmarks measure, from one function."""

    def test_in_process_bench(self):
        commands = {label: (fmt, ' '.join(cmd)) for label, fmt, cmd in
                    bench.reference_commands(direct_io=True)}
        self.assertEqual({
            'convert-raw': ('raw', 'qemu-img convert -t writeback -W '
                                   '-f qcow2 -O raw'),
            'convert-qcow2': ('qcow2', 'qemu-img convert -t writeback -W '
                                       '-f qcow2 -O qcow2'),
            'convert-unsafe': ('qcow2', 'qemu-img convert -t unsafe -W '
                                        '-f qcow2 -O qcow2'),
            'convert-nova': ('qcow2', 'qemu-img convert -t none '
                                      '-O qcow2 -f qcow2'),
        }, commands)

    def test_running_guest_without_direct_io(self):
        commands = {label: cmd for label, _fmt, cmd in
                    bench.reference_commands(direct_io=False,
                                             force_share=True,
                                             formats=('qcow2',))}
        self.assertEqual({'convert-qcow2', 'convert-unsafe',
                          'convert-nova'}, set(commands))
        for cmd in commands.values():
            self.assertEqual(['qemu-img', 'convert', '-U'], cmd[:3])
        self.assertEqual(['-t', 'writeback'],
                         commands['convert-nova'][3:5])
