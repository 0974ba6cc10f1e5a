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

"""The box's pieces that need no host: the Neutron stand-in, the images."""

import io
import json
import os

import fixtures
import testtools

from snapdriver.box import guest_images
from snapdriver.box import neutron_standin


def _call(method, path, query=''):
    seen = {}

    def start_response(status, headers):
        seen['status'] = status
        seen['headers'] = dict(headers)

    body = b''.join(neutron_standin.application(
        {'REQUEST_METHOD': method, 'PATH_INFO': path,
         'QUERY_STRING': query, 'wsgi.input': io.BytesIO()},
        start_response))
    return seen['status'], json.loads(body)


class NeutronStandinTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                'requests.log')
        self.useFixture(fixtures.EnvironmentVariable(
            'SNAPDRIVER_NEUTRON_STANDIN_LOG', self.log))

    def test_collections_are_empty(self):
        status, body = _call('GET', '/v2.0/ports', 'device_id=abc')
        self.assertEqual('200 OK', status)
        self.assertEqual({'ports': []}, body)

    def test_dashed_collection_key(self):
        self.assertEqual({'security_groups': []},
                         _call('GET', '/v2.0/security-groups.json')[1])

    def test_one_resource_is_not_found(self):
        status, body = _call('GET', '/v2.0/networks/abc')
        self.assertEqual('404 Not Found', status)
        self.assertEqual('NotFound', body['NeutronError']['type'])

    def test_quotas_are_unlimited(self):
        # nova-api reads the port quota of a server's project when the
        # request names no networks (microversion < 2.37).
        status, body = _call('GET', '/v2.0/quotas/e3f70d50ba86')
        self.assertEqual('200 OK', status)
        self.assertEqual(-1, body['quota']['port'])

    def test_writes_are_refused(self):
        status, body = _call('POST', '/v2.0/ports')
        self.assertEqual('403 Forbidden', status)
        self.assertIn('--nic none', body['NeutronError']['message'])

    def test_requests_are_logged(self):
        _call('GET', '/v2.0/ports', 'device_id=abc')
        _call('DELETE', '/v2.0/ports/x')
        with open(self.log) as f:
            lines = [line.split(' ', 1)[1] for line in f.read().splitlines()]
        self.assertEqual(['GET /v2.0/ports?device_id=abc 200',
                          'DELETE /v2.0/ports/x 403'], lines)


class GuestImagesTest(testtools.TestCase):

    def test_reader_has_no_writer_device(self):
        self.assertIn('snapguest.writer_dev=/dev/vda',
                      guest_images.cmdline('kvm'))
        reader = guest_images.reader_cmdline('qemu')
        self.assertNotIn('/dev/vda', reader)
        self.assertIn('mitigations=off', reader)
