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

"""Per-flavor and per-image strategy policy (snapdriver/policy.py)."""

from nova import objects
from oslotest import base

from snapdriver import exception
from snapdriver import policy

objects.register_all()

CONFIGURED = ['live-backup', 'live-shallow-rebase', 'cold-direct-extract',
              'stock']


def _instance(flavor_spec=None, image_prop=None):
    specs = {}
    if flavor_spec is not None:
        specs[policy.FLAVOR_SPEC] = flavor_spec
    sysmeta = {'image_min_disk': '1'}
    if image_prop is not None:
        sysmeta['image_' + policy.IMAGE_PROPERTY] = image_prop
    return objects.Instance(uuid='4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11',
                            flavor=objects.Flavor(extra_specs=specs),
                            system_metadata=sysmeta)


class ParseTestCase(base.BaseTestCase):

    def test_parse(self):
        self.assertEqual(['a', 'b-c'], policy.parse(' a , b-c,, '))
        self.assertEqual([], policy.parse(' '))
        self.assertIsNone(policy.parse(None))


class ResolveTestCase(base.BaseTestCase):

    def test_config_only(self):
        p = policy.resolve(CONFIGURED)
        self.assertEqual(CONFIGURED, p.names)
        self.assertEqual('config', p.source)

    def test_flavor_narrows_and_reorders(self):
        p = policy.resolve(CONFIGURED,
                           flavor=['cold-direct-extract', 'live-backup'])
        self.assertEqual(['cold-direct-extract', 'live-backup'], p.names)
        self.assertEqual('flavor', p.source)

    def test_flavor_cannot_widen(self):
        e = self.assertRaises(exception.SnapshotStrategyNotAllowed,
                              policy.resolve, CONFIGURED,
                              flavor=['live-backup', 'cold-internal'],
                              label='uuid-1')
        msg = str(e)
        self.assertIn('cold-internal named by the flavor extra spec '
                      'snapdriver:strategies of instance uuid-1', msg)
        self.assertIn('Allowed strategies: live-backup, live-shallow-rebase,'
                      ' cold-direct-extract, stock.', msg)

    def test_image_narrows_within_flavor(self):
        p = policy.resolve(CONFIGURED,
                           flavor=['live-shallow-rebase', 'live-backup',
                                   'cold-direct-extract'],
                           image=['live-backup', 'live-shallow-rebase'])
        # The flavor's order stays: the image only removes.
        self.assertEqual(['live-shallow-rebase', 'live-backup'], p.names)
        self.assertEqual('image', p.source)

    def test_image_narrows_config_without_flavor(self):
        p = policy.resolve(CONFIGURED, image=['stock', 'live-backup'])
        self.assertEqual(['live-backup', 'stock'], p.names)

    def test_image_cannot_widen_beyond_flavor(self):
        # cold-direct-extract is allowed by the host, but the flavor
        # (the operator) removed it: the image (the user) cannot add it.
        e = self.assertRaises(exception.SnapshotStrategyNotAllowed,
                              policy.resolve, CONFIGURED,
                              flavor=['live-backup', 'live-shallow-rebase'],
                              image=['cold-direct-extract'], label='u')
        self.assertIn('cold-direct-extract named by the image property '
                      'snapdriver_strategies', str(e))
        self.assertIn('Allowed strategies: live-backup, live-shallow-rebase.',
                      str(e))

    def test_empty_lists_are_refused(self):
        self.assertRaises(exception.SnapshotStrategyNotAllowed,
                          policy.resolve, CONFIGURED, flavor=[])
        self.assertRaises(exception.SnapshotStrategyNotAllowed,
                          policy.resolve, CONFIGURED, image=[])

    def test_error_is_a_nova_invalid(self):
        from nova import exception as nova_exception
        self.assertTrue(issubclass(exception.SnapshotStrategyNotAllowed,
                                   nova_exception.Invalid))

    def test_explain(self):
        p = policy.resolve(CONFIGURED, flavor=['live-backup', 'stock'],
                           image=['live-backup'])
        self.assertEqual(
            'effective strategies live-backup (from [snapdriver] strategies '
            '= live-backup, live-shallow-rebase, cold-direct-extract, stock;'
            ' then flavor snapdriver:strategies = live-backup, stock; then '
            'image snapdriver_strategies = live-backup)', p.explain())


class ForInstanceTestCase(base.BaseTestCase):

    def test_reads_flavor_and_image_system_metadata(self):
        inst = _instance('live-shallow-rebase, live-backup, stock',
                         'stock,live-backup')
        p = policy.for_instance(inst, CONFIGURED)
        self.assertEqual(['live-shallow-rebase', 'live-backup'],
                         policy.flavor_strategies(inst)[:2])
        self.assertEqual(['live-backup', 'stock'], p.names)

    def test_nothing_set(self):
        p = policy.for_instance(_instance(), CONFIGURED)
        self.assertEqual(CONFIGURED, p.names)
        self.assertIsNone(p.flavor)
        self.assertIsNone(p.image)

    def test_image_outside_flavor_is_refused(self):
        inst = _instance('live-backup', 'cold-direct-extract')
        self.assertRaises(exception.SnapshotStrategyNotAllowed,
                          policy.for_instance, inst, CONFIGURED)

    def test_orphaned_instance_without_flavor(self):
        # No context to lazy-load the flavor with: no flavor list.
        inst = objects.Instance(uuid='4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11',
                                system_metadata={})
        self.assertEqual(CONFIGURED,
                         policy.for_instance(inst, CONFIGURED).names)
