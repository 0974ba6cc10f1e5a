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

"""createImage through the compute API on guests Nova booted.

Named after tempest's ``tempest/api/compute/images/`` tests
(``test_images.py``, ``test_images_oneserver.py``,
``test_images_negative.py``) and ``tempest/scenario/test_snapshot_pattern.py``;
each runs on the box's real Nova, Glance and libvirt with the driver's
default strategy order, and checks what tempest cannot see from outside:
the content of the image, the libvirt domain and the snapshots directory.
"""

from snapdriver.tests.box import base


class ImagesOneServerTest(base.BoxTestCase):

    def _create_image_and_check(self, server, status, min_blocks):
        image = self.client.image_create(server['id'],
                                         'snap-%s' % status.lower())
        self.delete_image_later(image['id'])
        image = self.client.image(image['id'])
        n, run_id = self.assertSnapshotImage(image, server, min_blocks)
        self.assertServerBack(server, status)
        self.assertNoSnapshotLeftovers()
        return image, n, run_id

    def test_create_image_from_active_server(self):
        server = self.boot_writer()
        before = self.client.wait_for_seq(server, 20)
        self._create_image_and_check(server, 'ACTIVE', before)
        # The guest kept running through the snapshot: it still writes.
        self.client.wait_for_seq(server, self.client.console_seq(server) + 5,
                                 timeout=30)

    def test_create_image_from_paused_server(self):
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        self.client.run(['openstack', 'server', 'pause', server['id']])
        self.client.wait_for_server(server['id'], 'PAUSED')
        before = self.client.console_seq(server)
        self._create_image_and_check(server, 'PAUSED', before)

    def test_create_image_from_suspended_server(self):
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        self.client.run(['openstack', 'server', 'suspend', server['id']])
        self.client.wait_for_server(server['id'], 'SUSPENDED')
        before = self.client.console_seq(server)
        self._create_image_and_check(server, 'SUSPENDED', before)
        # Resuming restores the saved guest: its writer goes on.
        self.client.run(['openstack', 'server', 'resume', server['id']])
        self.client.wait_for_server(server['id'], 'ACTIVE')
        self.client.wait_for_seq(server, before + 5, timeout=60)

    def test_create_image_from_stopped_server(self):
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        self.client.run(['openstack', 'server', 'stop', server['id']])
        self.client.wait_for_server(server['id'], 'SHUTOFF')
        before = self.client.console_seq(server)
        self._create_image_and_check(server, 'SHUTOFF', before)

    def test_create_second_image_when_first_image_is_being_saved(self):
        # tempest: test_images_negative (409 Conflict). Both requests go
        # straight to the API, back to back: the first returns once the
        # server's task_state is image_snapshot, so the second must be
        # refused whatever the driver does.
        server = self.boot_writer()
        self.client.wait_for_seq(server, 5)
        sess = self.box.session()
        ep = {'service_type': 'compute'}
        url = '/servers/%s/action' % server['id']
        first = sess.post(url, endpoint_filter=ep, raise_exc=False,
                          json={'createImage': {'name': 'first'}},
                          headers={'OpenStack-API-Version': 'compute 2.45'})
        second = sess.post(url, endpoint_filter=ep, raise_exc=False,
                           json={'createImage': {'name': 'second'}},
                           headers={'OpenStack-API-Version':
                                    'compute 2.45'})
        self.assertEqual(202, first.status_code, first.text)
        image_id = first.json()['image_id']
        self.delete_image_later(image_id)
        self.assertEqual(409, second.status_code, second.text)
        # Refused for the first snapshot's task, whichever step it has
        # reached (on a quiet host it can already be uploading).
        self.assertRegex(second.text, 'task_state (image_snapshot|'
                         'image_snapshot_pending|image_pending_upload|'
                         'image_uploading)')
        self.assertServerBack(server, 'ACTIVE')
        self.assertEqual('active', self.client.image(image_id)['status'])
        self.assertNoSnapshotLeftovers()


class SnapshotPatternTest(base.BoxTestCase):
    """tempest.scenario.test_snapshot_pattern on the writer guest."""

    def test_snapshot_pattern(self):
        server = self.boot_writer()
        before = self.client.wait_for_seq(server, 20)
        image = self.client.image_create(server['id'], 'pattern')
        self.delete_image_later(image['id'])
        n, run_id = self.assertSnapshotImage(
            self.client.image(image['id']), server, before)
        # The clone must read, not write: boot it without its writer.
        self.client.make_reader(image['id'])
        clone = self.client.boot('pattern-clone', image=image['id'])
        self.addCleanup(self._delete_quietly, clone['id'])
        self.assertEqual('ACTIVE', clone['status'])
        self.assertTrue(self.client.read_back(clone, n, run_id))


class BackupAndShelveTest(base.BoxTestCase):
    """createBackup with rotation, shelve/unshelve.

    The compute manager's other callers of snapshot().
    """

    def _images_of(self, server_id, image_type):
        images = self.client.osc('image', 'list', '--long', '--property',
                                 'instance_uuid=%s' % server_id)
        found = []
        for image in images:
            full = self.client.image(image['ID'])
            if full['properties'].get('image_type') == image_type:
                found.append(full)
        return sorted(found, key=lambda i: i['created_at'])

    def test_create_backup_with_rotation(self):
        # tempest: test_server_actions.test_create_backup
        server = self.boot_writer()
        made = []
        for i in range(3):
            self.client.wait_for_seq(server,
                                     self.client.console_seq(server) + 5)
            before = self.client.console_seq(server)
            self.client.run(['openstack', 'server', 'backup', 'create',
                             '--name', 'backup-%d' % i, '--type', 'daily',
                             '--rotate', '2', '--wait', server['id']])
            self.assertServerBack(server, 'ACTIVE')
            backups = self._images_of(server['id'], 'backup')
            made.append((before, backups[-1]['id']))
            for image in backups:
                self.delete_image_later(image['id'])
        backups = self._images_of(server['id'], 'backup')
        # Rotation 2: the first backup was deleted, the last two stay.
        self.assertEqual([made[1][1], made[2][1]],
                         [b['id'] for b in backups])
        newest = backups[-1]
        self.assertEqual('active', newest['status'])
        self.assertEqual('daily', newest['properties'].get('backup_type'))
        self.assertSnapshotImage(newest, server, made[2][0],
                                 image_type='backup')
        self.assertNoSnapshotLeftovers()

    def test_shelve_offload_unshelve(self):
        # tempest: test_shelve_instance.test_shelve_instance (scenario)
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        self.client.run(['openstack', 'server', 'shelve', server['id']])
        shelved = self.client.wait_for_server(server['id'],
                                              'SHELVED_OFFLOADED')
        before = self.client.console_seq(server)
        images = self._images_of(server['id'], 'snapshot')
        self.assertEqual(1, len(images), images)
        image = images[0]
        self.delete_image_later(image['id'])
        self.assertEqual('%s-shelved' % shelved['name'], image['name'])
        n, run_id = self.assertSnapshotImage(image, server, before)
        # Offloaded: no domain and no instance files left on the host.
        self.assertFalse(any(self.client.domain_name(server) == d
                             for d in self._domain_names()))
        self.assertNoSnapshotLeftovers()
        # Unshelve from that image, as a reader: the guest finds the data.
        self.client.make_reader(image['id'])
        self.client.run(['openstack', 'server', 'unshelve', server['id']])
        server = self.client.wait_for_server(server['id'], 'ACTIVE')
        self.assertTrue(self.client.read_back(server, n, run_id))

    def _domain_names(self):
        import libvirt
        conn = libvirt.open('qemu:///system')
        try:
            return [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
