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

"""Every installed strategy through createImage, forced by configuration.

nova-compute is restarted with ``[snapdriver] strategies = <one name>``
for each installed strategy, and the same running guest (Nova booted it:
its own domain XML, ``_base`` plus overlay) is snapshotted through the
API by the real client. The default order is the rest of the scenario
tests.
"""

from snapdriver import strategies
from snapdriver.tests.box import base


class EveryStrategyTest(base.BoxTestCase):

    def test_every_installed_strategy(self):
        names = strategies.available_names()
        self.assertIn('live-backup', names)
        server = self.boot_writer()
        boot_id = self.client.boot_id(server)
        for name in names:
            self.set_strategies([name])
            before = self.client.wait_for_seq(
                server, self.client.console_seq(server) + 5)
            since = self.compute_log_end()
            image = self.client.image_create(server['id'], 'only-' + name)
            self.delete_image_later(image['id'])
            chosen = self.compute_log_lines(server, 'Snapshot strategy ',
                                            since)
            self.assertTrue(chosen, '%s: no strategy logged' % name)
            self.assertIn('Snapshot strategy %s chosen' % name, chosen[-1])
            self.assertSnapshotImage(self.client.image(image['id']),
                                     server, before)
            self.assertServerBack(server, 'ACTIVE')
            self.assertNoSnapshotLeftovers()
            # The same boot goes on: a cold strategy restored the guest.
            self.assertEqual(boot_id, self.client.boot_id(server), name)
