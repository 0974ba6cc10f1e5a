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

"""The [snapdriver] options and the committed sample configuration."""

import io
import os

from oslo_config import cfg
from oslo_config import generator
from oslotest import base

from snapdriver import conf

_TOP = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                    '..', '..', '..'))
_SAMPLE = os.path.join(_TOP, 'etc', 'snapdriver', 'snapdriver.conf.sample')


class ConfTestCase(base.BaseTestCase):

    def test_every_option_is_documented(self):
        for group, opts in conf.list_opts():
            for opt in opts:
                # oslo.config writes "Possible values" itself for choices.
                if not getattr(opt.type, 'choices', None):
                    self.assertIn('Possible values', opt.help, opt.name)
                self.assertGreater(len(opt.help.strip()), 80, opt.name)

    def test_list_opts_is_the_registered_group(self):
        [(group, opts)] = conf.list_opts()
        self.assertEqual('snapdriver', group.name)
        registered = set(conf.CONF.snapdriver.keys())
        self.assertEqual(registered, {o.name for o in opts})

    def test_committed_sample_is_up_to_date(self):
        if not os.path.exists(_SAMPLE):
            self.skipTest('not running from a source checkout (no %s)'
                          % _SAMPLE)
        out = io.StringIO()
        gen_conf = cfg.ConfigOpts()
        generator.register_cli_opts(gen_conf)
        gen_conf(['--namespace', 'snapdriver', '--wrap-width', '79'])
        generator.generate(gen_conf, output_file=out)
        with open(_SAMPLE) as f:
            self.assertEqual(
                f.read(), out.getvalue(),
                'etc/snapdriver/snapdriver.conf.sample is stale: run '
                'tox -e genconfig and commit the result')
