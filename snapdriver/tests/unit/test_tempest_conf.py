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

"""tempest.conf from a box's state, and the disk-1 flavor."""

import configparser
import json
import os
import stat
from unittest import mock

import fixtures
import testtools

from snapdriver.box import services
from snapdriver.box import tempest_conf


class TempestConfTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.state = {
            'ready': True,
            'ports': {'keystone': 41234, 'nova': 41235},
            'password': 'a8d0c3e1secret',
            'images': {'kernel': 'k-id', 'ramdisk': 'r-id',
                       'root': '6b1e0c4e-writer'},
        }
        self.box = self._box(self.state)
        self.workspace = os.path.join(self.dir, 'tempest')

    def _box(self, state):
        with open(os.path.join(self.dir, 'box.json'), 'w') as f:
            json.dump(state, f)
        box = services.Box(self.dir)
        self.assertTrue(box.load())
        return box

    def _written(self):
        path = tempest_conf.write(self.box, 'f1a-disk1', self.workspace)
        self.assertEqual(os.path.join(self.workspace, 'etc', 'tempest.conf'),
                         path)
        conf = configparser.ConfigParser()
        self.assertEqual([path], conf.read(path))
        return path, conf

    def test_values_come_from_the_box(self):
        _, conf = self._written()
        self.assertEqual('http://127.0.0.1:41234/v3',
                         conf['identity']['uri_v3'])
        self.assertEqual('a8d0c3e1secret', conf['auth']['admin_password'])
        self.assertEqual('admin', conf['auth']['admin_username'])
        for key in ('image_ref', 'image_ref_alt'):
            self.assertEqual('6b1e0c4e-writer', conf['compute'][key])
        for key in ('flavor_ref', 'flavor_ref_alt'):
            self.assertEqual('f1a-disk1', conf['compute'][key])
        for section in ('identity', 'compute', 'image', 'network'):
            self.assertEqual(services.REGION, conf[section]['region'])

    def test_logs_and_locks_in_the_workspace(self):
        _, conf = self._written()
        self.assertEqual(os.path.join(self.workspace, 'logs'),
                         conf['DEFAULT']['log_dir'])
        self.assertEqual(os.path.join(self.workspace, 'tempest_lock'),
                         conf['oslo_concurrency']['lock_path'])

    def test_what_the_box_has(self):
        _, conf = self._written()
        available = conf['service_available']
        for service in ('nova', 'glance', 'neutron', 'placement'):
            self.assertTrue(available.getboolean(service), service)
        for service in ('cinder', 'swift', 'horizon'):
            self.assertFalse(available.getboolean(service), service)
        # The stand-in makes no network: tempest must not ask for one.
        self.assertFalse(conf['auth'].getboolean('create_isolated_networks'))
        self.assertTrue(conf['compute-feature-enabled'].getboolean(
            'snapshot'))
        self.assertFalse(conf['validation'].getboolean('run_validation'))

    def test_only_root_reads_it(self):
        path, _ = self._written()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))

    def test_a_box_not_ready_is_refused(self):
        self.state['ready'] = False
        self.box = self._box(self.state)
        self.assertRaises(services.BoxError, tempest_conf.write, self.box,
                          'f1a-disk1', self.workspace)
        self.assertFalse(os.path.exists(self.workspace))

    def test_flavor_has_a_disk(self):
        session = mock.Mock()
        session.post.return_value.json.return_value = {
            'flavor': {'id': 'f1a-disk1'}}
        with mock.patch.object(self.box, 'session', return_value=session):
            self.assertEqual('f1a-disk1',
                             tempest_conf.create_flavor(self.box))
        body = session.post.call_args.kwargs['json']['flavor']
        self.assertEqual(tempest_conf.FLAVOR_NAME, body['name'])
        # Nova lets only an admin boot from a zero-disk flavor.
        self.assertGreater(body['disk'], 0)
        self.assertTrue(body['os-flavor-access:is_public'])
        self.assertEqual('/flavors', session.post.call_args.args[0])
