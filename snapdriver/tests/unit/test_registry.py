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

"""The strategy registry: loading, ordering, choosing, reasons."""

from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base
from stevedore import extension

from snapdriver import conf
from snapdriver import exception
from snapdriver import strategies
from snapdriver.strategies import base as strategy_base
from snapdriver.tests.unit import fakes

CONF = conf.CONF


class _Never(strategy_base.SnapshotStrategy):
    description = 'never applies'

    def __init__(self, reason='it never does'):
        self.reason = reason

    def unsupported_reason(self, request):
        return self.reason

    def capture(self, request, out_path, run):
        raise AssertionError('must not run')


class _Always(strategy_base.SnapshotStrategy):
    description = 'a third-party strategy'

    def unsupported_reason(self, request):
        return None

    def capture(self, request, out_path, run):
        with open(out_path, 'wb') as f:
            f.write(b'third party')


def _registry(*pairs):
    """A Registry over test extensions, as a third party's would load."""
    exts = [extension.Extension(name, None, (lambda o=obj: o), obj)
            for name, obj in pairs]
    return strategies.Registry(extension.ExtensionManager.make_test_instance(
        exts, namespace=strategies.NAMESPACE))


class RegistryLoadTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))

    def test_default_order(self):
        self.assertEqual(conf.DEFAULT_STRATEGIES,
                         strategies.Registry.load().names())

    def test_installed_strategies(self):
        names = strategies.available_names()
        for name in ('cold-internal', 'cold-direct-extract',
                     'live-shallow-rebase', 'stock'):
            self.assertIn(name, names)

    def test_configured_order_is_kept(self):
        self.conf.config(strategies=['stock', 'cold-internal'],
                         group='snapdriver')
        self.assertEqual(['stock', 'cold-internal'],
                         strategies.Registry.load().names())

    def test_unknown_name_lists_installed_ones(self):
        self.conf.config(strategies=['live-shallow-rebase', 'warp-drive'],
                         group='snapdriver')
        e = self.assertRaises(exception.UnknownSnapshotStrategy,
                              strategies.Registry.load)
        msg = str(e)
        self.assertIn('warp-drive', msg)
        self.assertIn('[snapdriver] strategies', msg)
        self.assertIn('cold-direct-extract', msg)

    def test_empty_list_is_refused(self):
        self.conf.config(strategies=[], group='snapdriver')
        e = self.assertRaises(exception.NoSnapshotStrategyConfigured,
                              strategies.Registry.load)
        self.assertIn('[snapdriver] strategies', str(e))
        self.assertIn('live-shallow-rebase', str(e))

    def test_blank_names_count_as_empty(self):
        self.conf.config(strategies=[' ', ''], group='snapdriver')
        self.assertRaises(exception.NoSnapshotStrategyConfigured,
                          strategies.Registry.load)

    def test_names_override_the_option(self):
        self.assertEqual(['cold-internal'],
                         strategies.Registry.load(['cold-internal']).names())

    def test_negative_timeout_is_refused_by_oslo_config(self):
        self.assertRaises(ValueError, self.conf.config,
                          qemu_img_timeout=-1, group='snapdriver')


class RegistryChooseTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.request = fakes.make_request()

    def test_first_applicable_wins_and_reasons_are_kept(self):
        third = _Always()
        registry = _registry(('a', _Never('reason a')),
                             ('b', _Never('reason b')),
                             ('third-party', third),
                             ('d', _Always()))
        strategy, skipped = registry.plan(self.request)
        self.assertIs(third, strategy)
        self.assertEqual([('a', 'reason a'), ('b', 'reason b')], skipped)

    def test_choose_logs_each_skipped_strategy(self):
        registry = _registry(('a', _Never('reason a')), ('b', _Always()))
        with mock.patch.object(strategies, 'LOG') as log:
            strategy, _ = registry.choose(self.request)
        self.assertEqual('b', strategy.name)
        logged = [c.args[1] for c in log.info.call_args_list]
        self.assertIn({'name': 'a', 'reason': 'reason a'}, logged)

    def test_none_applicable_names_every_reason(self):
        registry = _registry(('a', _Never('reason a')),
                             ('b', _Never('reason b')))
        e = self.assertRaises(exception.NoApplicableSnapshotStrategy,
                              registry.choose, self.request)
        self.assertIn('a: reason a', str(e))
        self.assertIn('b: reason b', str(e))
        self.assertIn(self.request.name, str(e))
        self.assertIn('guest was not touched', str(e))

    def test_only_live_means_never_stop_the_guest(self):
        from nova.compute import power_state
        from snapdriver.strategies import live_shallow_rebase
        registry = _registry(
            ('live-shallow-rebase', live_shallow_rebase.LiveShallowRebase()))
        shut = fakes.replace(self.request, power_state=power_state.CRASHED)
        self.assertRaises(exception.NoApplicableSnapshotStrategy,
                          registry.choose, shut)

    def test_get_unknown(self):
        registry = _registry(('a', _Always()))
        self.assertRaises(exception.UnknownSnapshotStrategy,
                          registry.get, 'b')
