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

"""Every strategy, in every guest state it applies to, on a real domain.

Each test takes a snapshot through LibvirtSnapshotDriver.snapshot() and
checks the uploaded image holds exactly the disk's content, the guest is
back in the state it had and still persistent, and nothing is left behind.
"""

import logging
import re

import fixtures
import testscenarios

from snapdriver.tests.functional import base

load_tests = testscenarios.load_tests_apply_scenarios

_CASES = [
    # (strategy, start state, output format)
    ('live-shallow-rebase', 'running', 'qcow2'),
    ('live-shallow-rebase', 'running', 'raw'),
    ('live-shallow-rebase', 'paused', 'qcow2'),
    ('cold-direct-extract', 'running', 'raw'),
    ('cold-direct-extract', 'paused', 'qcow2'),
    ('cold-direct-extract', 'shutoff', 'qcow2'),
    ('cold-direct-extract', 'shutoff', 'raw'),
    ('cold-internal', 'running', 'qcow2'),
    ('cold-internal', 'paused', 'raw'),
    ('cold-internal', 'shutoff', 'raw'),
]


class StrategyMatrixTestCase(base.DriverTestCase):

    scenarios = [
        ('%s-%s-%s' % case, {'strategy': case[0], 'state': case[1],
                             'fmt': case[2]})
        for case in _CASES
    ]

    def test_snapshot(self):
        self.flags(strategies=[self.strategy], group='snapdriver')
        self.flags(snapshot_image_format=self.fmt, group='libvirt')
        domain = self.make_domain(self.state)
        live = self.strategy.startswith('live-')

        calls, sampler = self.snapshot(domain, sample=live)

        self.assert_task_states(calls)
        self.assert_image_equals_disk('image-1', self.fmt, domain)
        self.assert_guest_intact(domain, self.state)
        if live:
            # The guest never left its state and the domain was never
            # transient (the stock driver undefines it for the copy).
            self.assert_sampled_throughout(sampler)
            self.assertEqual({self.state}, sampler.states)
            self.assertEqual(0, sampler.transient_samples)


class DefaultChoiceTestCase(base.DriverTestCase):
    """With the default [snapdriver] strategies, the right one is used."""

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(
            name='snapdriver.runner', level=logging.INFO))

    def assert_strategy_ran(self, name):
        """``name``, and only it, extracted the snapshot."""
        ran = re.findall(r'Snapshot extracted by (\S+) in', self.log.output)
        self.assertEqual([name], ran, self.log.output)

    def test_running_guest_is_snapshotted_live(self):
        domain = self.make_domain('running')
        calls, sampler = self.snapshot(domain, sample=True)
        self.assert_strategy_ran('live-backup')
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assert_sampled_throughout(sampler)
        self.assertEqual({'running'}, sampler.states)
        self.assertEqual(0, sampler.transient_samples)

    def test_shut_off_guest_is_converted_directly(self):
        domain = self.make_domain('shutoff')
        self.snapshot(domain)
        self.assert_strategy_ran('cold-direct-extract')
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'shutoff')

    def test_disabled_live_snapshot_falls_back_to_cold(self):
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        domain = self.make_domain('running')
        calls, sampler = self.snapshot(domain, sample=True)
        self.assert_strategy_ran('cold-direct-extract')
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        # A cold strategy stopped the guest for a while.
        self.assert_sampled_throughout(sampler)
        self.assertIn('shutoff', sampler.states)
        self.assertEqual(0, sampler.transient_samples)


class LiveFlattenTestCase(base.DriverTestCase):
    """[snapdriver] live_flatten: both ways give the same image."""

    scenarios = [
        ('auto', {'mode': 'auto', 'expected': 'convert'}),
        ('convert', {'mode': 'convert', 'expected': 'convert'}),
        ('in-place', {'mode': 'in-place', 'expected': 'in-place'}),
    ]

    def test_flatten(self):
        self.flags(strategies=['live-shallow-rebase'],
                   live_flatten=self.mode, group='snapdriver')
        log = self.useFixture(fixtures.FakeLogger(
            name='snapdriver.strategies.live_shallow_rebase',
            level=logging.INFO))
        domain = self.make_domain('running')
        self.snapshot(domain)
        self.assertIn('Flattening the overlay of %s: %s'
                      % (domain.name, self.expected), log.output)
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
