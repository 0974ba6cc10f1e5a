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

"""The box's stand-in for Neutron: a network API with no networks.

The box's servers boot with ``--nic none`` (``networks: none``,
microversion 2.37+), so Nova never asks for a port; it still *reads* from
Neutron (the ports of a server when it is deleted or its network info
cache is healed, the extension list, security groups of a server shown).
This WSGI application answers every such read as a Neutron with nothing
in it would: an empty collection for ``GET /v2.0/<collection>``, 404 for
one resource, unlimited quotas for ``GET /v2.0/quotas/<project>`` (a
request without ``networks``, below microversion 2.37, makes nova-api
check the project's port quota, as tempest's servers do), and refuses
every write with 403, so that a call that would
need a real network fails loudly instead of pretending. Every request is
logged (``SNAPDRIVER_NEUTRON_STANDIN_LOG``, one line each) so that the box
can show exactly which calls Nova made.

Served by gunicorn (``snapdriver.box.neutron_standin:application``);
authentication is not checked (it listens on 127.0.0.1 only).
"""

import json
import os
import time

_VERSIONS = {'versions': [{'id': 'v2.0', 'status': 'CURRENT', 'links': []}]}
#: A project's quotas: -1, unlimited, as Neutron says it.
_QUOTA = {'quota': {name: -1 for name in (
    'network', 'subnet', 'port', 'router', 'floatingip', 'security_group',
    'security_group_rule')}}


def _log(environ, status):
    path = os.environ.get('SNAPDRIVER_NEUTRON_STANDIN_LOG')
    if not path:
        return
    query = environ.get('QUERY_STRING')
    line = '%s %s %s%s %s\n' % (
        time.strftime('%Y-%m-%dT%H:%M:%S'), environ.get('REQUEST_METHOD'),
        environ.get('PATH_INFO'), '?' + query if query else '', status)
    with open(path, 'a') as f:
        f.write(line)


def application(environ, start_response):
    method = environ.get('REQUEST_METHOD', 'GET')
    parts = [p for p in environ.get('PATH_INFO', '/').split('/') if p]
    if parts and parts[-1].endswith('.json'):
        parts[-1] = parts[-1][:-len('.json')]
    if not parts:
        status, body = '200 OK', _VERSIONS
    elif method != 'GET':
        status = '403 Forbidden'
        body = {'NeutronError': {
            'type': 'Forbidden',
            'message': 'the snapdriver box has no networking: boot servers '
                       'with --nic none',
            'detail': ''}}
    elif parts[0] != 'v2.0':
        status, body = '404 Not Found', {}
    elif len(parts) == 2:
        # A collection: nothing in it (ports, networks, extensions,
        # security-groups, floatingips, ...).
        status, body = '200 OK', {parts[1].replace('-', '_'): []}
    elif len(parts) == 3 and parts[1] == 'quotas':
        status, body = '200 OK', _QUOTA
    else:
        status = '404 Not Found'
        body = {'NeutronError': {'type': 'NotFound',
                                 'message': 'no such resource',
                                 'detail': ''}}
    _log(environ, status.split()[0])
    data = json.dumps(body).encode()
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(data)))])
    return [data]
