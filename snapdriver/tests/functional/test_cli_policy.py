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

"""``snapdriver plan`` and ``snapshot`` with the flavor/image policy, on
real domains; the flavor's list read from the Nova metadata of the domain
XML (written here as Nova's libvirt driver writes it).
"""

import datetime
import os

import libvirt
from nova.virt.libvirt import config as vconfig

from snapdriver.tests.functional import test_cli
from snapdriver.tests.unit import test_cmd_policy


class PlanPolicyTestCase(test_cli.CliTestCase):

    def set_nova_flavor(self, domain, strategies):
        xml = test_cmd_policy.nova_domain_xml(
            {'snapdriver:strategies': strategies})
        start = xml.index('<nova:instance')
        end = xml.index('</nova:instance>') + len('</nova:instance>')
        # NOTE: libvirt declares the namespace on the element itself, with
        # the key given below as its prefix.
        element = xml[start:end].replace(
            ' xmlns:nova="%s"' % vconfig.NOVA_NS, '').replace('nova:', '')
        domain.dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, 'nova',
            vconfig.NOVA_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def test_flavor_from_the_domain_xml_reorders(self):
        domain = self.make_domain('shutoff')
        self.set_nova_flavor(domain, 'cold-internal, cold-direct-extract')
        self.write_conf(['live-backup', 'cold-direct-extract',
                         'cold-internal'])
        rc, out, err = self.cli('plan', domain.uuid)
        self.assertEqual(0, rc, out + err)
        self.assertIn('effective strategies cold-internal, '
                      'cold-direct-extract', out)
        self.assertIn('flavor list from the <nova:flavor> extra specs', out)
        self.assertIn('CHOSEN', self.plan_line(out, 'cold-internal'))
        self.assertNotIn(' live-backup ', out.split('strategies, in '
                                                    'order:')[1])
        self.assertIn('snapdriver_consistency:       cold', out)

    def test_live_only_flavor_for_a_shut_off_guest(self):
        domain = self.make_domain('shutoff')
        rc, out, err = self.cli('plan', domain.name, '--flavor-strategies',
                                'live-backup,live-shallow-rebase')
        self.assertEqual(1, rc, out + err)
        self.assertIn('skipped: the guest is shut off',
                      self.plan_line(out, 'live-backup'))
        self.assertIn('no strategy applies', out)

    def test_image_cannot_widen(self):
        domain = self.make_domain('running')
        rc, out, err = self.cli('plan', domain.name, '--flavor-strategies',
                                'live-backup', '--image-strategies',
                                'cold-direct-extract')
        self.assertEqual(1, rc, out + err)
        self.assertIn('cold-direct-extract named by the image property '
                      'snapdriver_strategies', err)
        self.assertIn('Allowed strategies: live-backup.', err)

    def test_plan_and_snapshot_say_the_same(self):
        domain = self.make_domain('running')
        args = ('--flavor-strategies', 'live-shallow-rebase,live-backup',
                '--image-strategies', 'live-backup,live-shallow-rebase')
        rc, plan, err = self.cli('plan', domain.name, *args)
        self.assertEqual(0, rc, plan + err)
        self.assertIn('CHOSEN', self.plan_line(plan, 'live-shallow-rebase'))
        self.assertIn('snapdriver_strategy:          live-shallow-rebase',
                      plan)
        self.assertIn('snapdriver_consistency:       crash', plan)
        self.assertIn('snapdriver_guest_downtime_ms: 0', plan)

        output = os.path.join(self.outdir, 'snap.qcow2')
        workdir = os.path.join(self.workdir, 'work')
        os.mkdir(workdir, 0o711)
        before = datetime.datetime.now(datetime.timezone.utc)
        rc, out, err = self.cli('snapshot', domain.name, output, '--format',
                                'qcow2', '--work-dir', workdir, *args)
        self.assertEqual(0, rc, err)
        self.assertIn('strategy:        live-shallow-rebase', out)
        self.assertIn('snapdriver_strategy:          live-shallow-rebase',
                      out)
        self.assertIn('snapdriver_consistency:       crash', out)
        self.assertIn('snapdriver_guest_downtime_ms: 0', out)
        line = [ln for ln in out.splitlines()
                if 'snapdriver_point_in_time:' in ln][0]
        when = datetime.datetime.fromisoformat(line.split()[-1])
        self.assertTrue(before <= when <=
                        datetime.datetime.now(datetime.timezone.utc), when)
