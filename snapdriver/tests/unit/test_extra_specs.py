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

"""The nova-api extra spec validator (snapdriver/extra_specs.py)."""

from importlib import metadata
from unittest import mock

from nova import exception as nova_exception
from oslotest import base

from snapdriver import extra_specs

INSTALLED = ['cold-direct-extract', 'cold-internal', 'live-backup',
             'live-shallow-rebase', 'stock']


class ValidatorTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        with mock.patch('snapdriver.strategies.available_names',
                        return_value=INSTALLED):
            (self.validator,) = extra_specs.register()

    def test_name(self):
        self.assertEqual('snapdriver:strategies', self.validator.name)
        self.assertIn('Installed strategies: cold-direct-extract',
                      self.validator.description)

    def test_valid_lists(self):
        for value in ('live-backup', 'live-backup,stock',
                      ' live-shallow-rebase , cold-direct-extract '):
            self.validator.validate('snapdriver:strategies', value)

    def test_unknown_name_lists_the_installed(self):
        e = self.assertRaises(nova_exception.ValidationError,
                              self.validator.validate,
                              'snapdriver:strategies', 'live-backup,no-such')
        self.assertIn('unknown strategies no-such', str(e))
        self.assertIn('Installed snapshot strategies: cold-direct-extract, '
                      'cold-internal, live-backup, live-shallow-rebase, '
                      'stock.', str(e))

    def test_empty_and_duplicates(self):
        self.assertRaises(nova_exception.ValidationError,
                          self.validator.validate,
                          'snapdriver:strategies', ' , ')
        e = self.assertRaises(nova_exception.ValidationError,
                              self.validator.validate,
                              'snapdriver:strategies', 'stock,stock')
        self.assertIn('stock more than once', str(e))

    def test_pattern_documents_the_names(self):
        import re
        self.assertTrue(re.fullmatch(self.validator.value_regex,
                                     'live-backup, stock'))
        self.assertFalse(re.fullmatch(self.validator.value_regex,
                                      'live-backup, no-such'))


class EntryPointTestCase(base.BaseTestCase):

    def test_registered_for_nova_api(self):
        try:
            eps = metadata.distribution('snapdriver').entry_points
        except metadata.PackageNotFoundError:
            self.skipTest('snapdriver is not installed (run through tox)')
        found = [ep.value for ep in eps
                 if ep.group == 'nova.api.extra_spec_validators']
        self.assertEqual(['snapdriver.extra_specs'], found)
