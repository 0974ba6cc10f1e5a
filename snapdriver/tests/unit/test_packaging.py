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

"""What the installed distribution adds to Nova's tree."""

from importlib import metadata

from oslotest import base


class PackagingTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        try:
            self.files = [str(f) for f in metadata.files('snapdriver')]
        except metadata.PackageNotFoundError:
            self.skipTest('snapdriver is not installed (run through tox)')

    def test_only_the_shim_is_added_under_nova(self):
        # pip uninstall removes exactly the files of RECORD: nothing of
        # Nova's own may be listed there.
        under_nova = sorted(f for f in self.files
                            if f.startswith('nova/') and
                            not f.endswith('.pyc'))
        self.assertEqual(['nova/virt/snapdriver/__init__.py'], under_nova)

    def test_entry_points(self):
        eps = metadata.distribution('snapdriver').entry_points
        strategies = {ep.name for ep in eps
                      if ep.group == 'snapdriver.snapshot_strategies'}
        for name in ('cold-internal', 'cold-direct-extract',
                     'live-shallow-rebase', 'stock'):
            self.assertIn(name, strategies)
        opts = [ep.value for ep in eps if ep.group == 'oslo.config.opts']
        self.assertEqual(['snapdriver.conf:list_opts'], opts)
