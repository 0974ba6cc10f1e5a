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

"""The policy in the snapdriver command (snapdriver/cmd/policy.py)."""

import argparse
import io
import time
from unittest import mock

from nova.virt.libvirt import config as vconfig
from oslotest import base
from stevedore import extension

from snapdriver.cmd import policy as cli_policy
from snapdriver import exception
from snapdriver import strategies
from snapdriver.strategies import base as strategy_base

UUID = '4f2ab6c3-0d3e-4c55-8c9a-5b0d3f3e2c11'


def nova_domain_xml(extra_specs):
    """A domain XML with the metadata Nova's libvirt driver writes."""
    flavor = vconfig.LibvirtConfigGuestMetaNovaFlavor()
    flavor.name, flavor.id, flavor.memory, flavor.disk = 'm1.db', '42', 512, 1
    flavor.swap, flavor.ephemeral, flavor.vcpus = 0, 0, 1
    flavor.extra_specs = extra_specs
    meta = vconfig.LibvirtConfigGuestMetaNovaInstance()
    meta.flavor, meta.name, meta.package = flavor, 'srv', '34.0.0'
    meta.creationTime = time.time()
    meta.owner = vconfig.LibvirtConfigGuestMetaNovaOwner()
    meta.owner.userid = meta.owner.username = 'u'
    meta.owner.projectid = meta.owner.projectname = 'p'
    guest = vconfig.LibvirtConfigGuest()
    guest.virt_type, guest.name, guest.uuid = 'qemu', 'instance-1', UUID
    guest.memory, guest.vcpus, guest.os_type = 1024, 1, 'hvm'
    guest.metadata.append(meta)
    return guest.to_xml()


class _Always(strategy_base.SnapshotStrategy):
    def unsupported_reason(self, request):
        return None

    def capture(self, request, out_path, run):
        raise AssertionError('must not run')


def _registry(names):
    return strategies.Registry(extension.ExtensionManager.make_test_instance(
        [extension.Extension(n, None, _Always, None) for n in names]))


def _args(argv):
    parser = argparse.ArgumentParser()
    cli_policy.add_arguments(parser)
    return parser.parse_args(argv)


class FlavorSpecFromXmlTestCase(base.BaseTestCase):

    def test_reads_novas_extra_specs(self):
        xml = nova_domain_xml({'hw:cpu_policy': 'shared',
                               'snapdriver:strategies': 'live-backup,stock'})
        self.assertEqual('live-backup,stock',
                         cli_policy.flavor_spec_from_xml(xml))

    def test_absent(self):
        self.assertIsNone(cli_policy.flavor_spec_from_xml(
            nova_domain_xml({'hw:cpu_policy': 'shared'})))
        self.assertIsNone(cli_policy.flavor_spec_from_xml(
            '<domain><name>x</name></domain>'))


class ResolveTestCase(base.BaseTestCase):

    NAMES = ['live-backup', 'live-shallow-rebase', 'cold-direct-extract']

    def setUp(self):
        super().setUp()
        self.guest = mock.Mock(uuid=UUID)
        self.guest.get_xml_desc.return_value = nova_domain_xml(
            {'snapdriver:strategies': 'cold-direct-extract, live-backup'})

    def test_flavor_from_the_domain_xml(self):
        registry, chosen, source = cli_policy.resolve(
            _registry(self.NAMES), self.guest, _args([]))
        self.assertEqual(['cold-direct-extract', 'live-backup'],
                         registry.names())
        self.assertIn('domain XML', source)
        out = io.StringIO()
        cli_policy.describe(chosen, source, out)
        self.assertIn('flavor snapdriver:strategies = cold-direct-extract, '
                      'live-backup', out.getvalue())

    def test_options_override_and_narrow(self):
        registry, chosen, source = cli_policy.resolve(
            _registry(self.NAMES), self.guest,
            _args(['--flavor-strategies', 'live-shallow-rebase,live-backup',
                   '--image-strategies', 'live-backup']))
        self.assertEqual(['live-backup'], registry.names())
        self.assertEqual('--flavor-strategies', source)
        self.assertEqual('image', chosen.source)
        out = io.StringIO()
        cli_policy.describe(chosen, source, out)
        self.assertIn('live-shallow-rebase: left out by the image\n',
                      out.getvalue())
        self.assertIn('cold-direct-extract: left out by the flavor\n',
                      out.getvalue())

    def test_image_cannot_widen(self):
        self.assertRaises(exception.SnapshotStrategyNotAllowed,
                          cli_policy.resolve, _registry(self.NAMES),
                          self.guest,
                          _args(['--image-strategies',
                                 'live-shallow-rebase']))
