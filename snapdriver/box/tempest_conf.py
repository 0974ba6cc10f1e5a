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

"""tempest.conf for a running box, from the box's own state.

The values come from ``box.json`` (:class:`snapdriver.box.services.Box`):
Keystone's URL and the admin password, the id of the ``snapbox-writer``
image; and from the flavor :func:`create_flavor` makes. The rest says what
the box has and has not: no Cinder, Swift or Horizon; the Neutron
stand-in (tempest skips every compute test class that wants a default
network when ``neutron`` is false, and makes no network with
``create_isolated_networks = false``: Nova then boots the servers with no
port); no resize or migration (one host), no console, no rescue, no
config drive, no metadata service, no SSH into the guest.
"""

import os

from snapdriver.box import services

#: The flavor tempest boots from. The box's own (``snapbox.tiny``) has
#: disk 0, and Nova lets only an admin boot a zero-disk flavor from an
#: image (403 "Only volume-backed servers are allowed for flavors with
#: zero disk"); tempest's dynamic users are not admins.
FLAVOR_NAME = 'tempest.tiny'


def create_flavor(box):
    """Create the public disk-1 flavor as the box's admin; return its id.

    :param box: a started :class:`snapdriver.box.services.Box`.
    """
    body = {'flavor': {'name': FLAVOR_NAME, 'ram': 256, 'vcpus': 1,
                       'disk': 1, 'os-flavor-access:is_public': True}}
    resp = box.session().post('/flavors', json=body, endpoint_filter={
        'service_type': 'compute'})
    return resp.json()['flavor']['id']


def sections(box, flavor_id, workspace):
    """tempest.conf as ``{section: {option: value}}``.

    :param box: a started :class:`snapdriver.box.services.Box` (its
        ``state`` loaded).
    :param flavor_id: the flavor tempest boots from (:func:`create_flavor`).
    :param workspace: the tempest workspace (``tempest init``); logs and
        locks go below it.
    :raises snapdriver.box.services.BoxError: the box is not ready.
    """
    state = box.state
    if not state.get('ready') or not state.get('images', {}).get('root'):
        raise services.BoxError('the box in %s is not ready (no box.json, '
                                'or start failed)' % box.dir)
    image = state['images']['root']
    region = services.REGION
    return {
        'DEFAULT': {
            'log_dir': os.path.join(workspace, 'logs'),
            'log_file': 'tempest.log',
            'debug': 'true',
        },
        'oslo_concurrency': {
            'lock_path': os.path.join(workspace, 'tempest_lock'),
        },
        'auth': {
            'use_dynamic_credentials': 'true',
            'create_isolated_networks': 'false',
            'admin_username': services.ADMIN_USER,
            'admin_password': state['password'],
            'admin_project_name': 'admin',
            'admin_domain_name': 'Default',
            'default_credentials_domain_name': 'Default',
        },
        'identity': {
            'uri_v3': box.auth_url,
            'auth_version': 'v3',
            'region': region,
            'disable_ssl_certificate_validation': 'true',
        },
        'identity-feature-enabled': {'api_v2': 'false'},
        'compute': {
            'image_ref': image,
            'image_ref_alt': image,
            'flavor_ref': flavor_id,
            'flavor_ref_alt': flavor_id,
            'region': region,
            # TCG guests on a shared 2-core host: a snapshot of a server
            # that is still booting can take minutes.
            'build_timeout': '600',
            'build_interval': '2',
        },
        'compute-feature-enabled': {
            'snapshot': 'true',
            'pause': 'true',
            'suspend': 'true',
            'shelve': 'true',
            'console_output': 'true',
            'resize': 'false',
            'live_migration': 'false',
            'cold_migration': 'false',
            'vnc_console': 'false',
            'spice_console': 'false',
            'serial_console': 'false',
            'rescue': 'false',
            'attach_encrypted_volume': 'false',
            'config_drive': 'false',
            'metadata_service': 'false',
        },
        'image': {'region': region, 'build_timeout': '600'},
        'image-feature-enabled': {
            'api_v2': 'true',
            'api_v1': 'false',
            'import_image': 'false',
            'os_glance_reserved': 'true',
        },
        'network': {'region': region},
        'network-feature-enabled': {'ipv6': 'false'},
        'service_available': {
            'nova': 'true',
            'glance': 'true',
            'neutron': 'true',
            'placement': 'true',
            'cinder': 'false',
            'swift': 'false',
            'horizon': 'false',
        },
        'validation': {'run_validation': 'false'},
    }


def write(box, flavor_id, workspace):
    """Write ``<workspace>/etc/tempest.conf``; return its path.

    The file is 0600: it holds the box's admin password.
    """
    text = services._ini(sections(box, flavor_id, workspace))
    path = os.path.join(workspace, 'etc', 'tempest.conf')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    services._write(path, text)
    return path
