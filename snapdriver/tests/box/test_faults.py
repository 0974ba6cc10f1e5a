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

"""Faults during createImage on guests Nova booted.

tempest's ``test_images.test_delete_saving_image`` and the Nova bugs
behind it, quiesce with a real guest agent (``hw_qemu_guest_agent`` and
``os_require_quiesce``), and nova-compute SIGKILLed in the middle of a
live and of a cold snapshot.
"""

import os
import signal
import time

import libvirt

from snapdriver.box import guest_images
from snapdriver.tests.box import base

#: How often the tests look for the snapshot to be under way.
POLL = 0.005


class SnapshotFaultsTest(base.BoxTestCase):

    def _post_create_image(self, server, name):
        """createImage without waiting; return the image id."""
        sess = self.box.session()
        resp = sess.post('/servers/%s/action' % server['id'],
                         endpoint_filter={'service_type': 'compute'},
                         json={'createImage': {'name': name}},
                         headers={'OpenStack-API-Version': 'compute 2.45'})
        image_id = resp.json()['image_id']
        self.delete_image_later(image_id)
        return image_id

    def _wait_for_work_dir(self, timeout=120):
        """Wait until the driver's work directory exists; return its name.

        The work directory (``snapdriver-<uuid>-<host>-*`` in the
        snapshots directory) exists from the capture's start to its end.
        """
        path = self.box.snapshots_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = [n for n in os.listdir(path)
                         if n.startswith('snapdriver-')]
            except FileNotFoundError:
                found = []
            if found:
                return found[0]
            time.sleep(POLL)
        self.fail('no snapshot work directory in %s after %d s' % (
            path, timeout))

    def _image_gone(self, image_id, timeout=60):
        sess = self.box.session()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = sess.get('/v2/images/%s' % image_id, raise_exc=False,
                            endpoint_filter={'service_type': 'image'})
            if resp.status_code == 404 or resp.json().get(
                    'status') in ('deleted', 'killed'):
                return
            time.sleep(0.5)
        self.fail('image %s still there after %d s' % (image_id, timeout))

    def _assert_no_job(self, server):
        dom = self.domain(server)
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE, dom.jobInfo()[0])
        self.assertEqual(0, dom.hasManagedSaveImage(0))
        self.assertEqual([], dom.listAllSnapshots(0))

    def test_delete_image_while_saving(self):
        # tempest: test_images.test_delete_saving_image, here with the
        # image deleted while the driver's capture is under way (tempest
        # deletes it as soon as the API has created it).
        # NOTE: with cold-direct-extract, whose capture (managed save,
        # convert, restore) lasts seconds: a live-backup of this small
        # disk is over in ~0.15 s, before a DELETE can land (seen once on
        # a quiet host); the upload that follows must then fail, and the
        # guest come back from its managed save.
        self.set_strategies(['cold-direct-extract'])
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        boot_id = self.client.boot_id(server)
        since = self.compute_log_end()
        image_id = self._post_create_image(server, 'deleted-while-saving')
        self._wait_for_work_dir()
        self.box.session().delete('/v2/images/%s' % image_id,
                                  endpoint_filter={'service_type': 'image'})
        self._image_gone(image_id)
        self.assertServerBack(server, 'ACTIVE')
        self._assert_no_job(server)
        self.assertNoSnapshotLeftovers()
        # The compute manager's own message for ImageNotFound, logged
        # after the driver cleaned up and let the error through.
        self.assertEqual(
            1, len(self.compute_log_lines(
                server, 'Image not found during snapshot', since)))
        self.assertTrue(self.compute_log_lines(
            server, 'Snapshot strategy cold-direct-extract chosen', since))
        # The guest was not harmed: the same boot, still writing.
        self.assertEqual(boot_id, self.client.boot_id(server))
        seq = self.client.console_seq(server)
        self.client.wait_for_seq(server, seq + 5, timeout=60)

    def test_quiesce_with_agent_and_without(self):
        # os_require_quiesce=yes: the snapshot must freeze the guest's
        # filesystems through its agent, once, and thaw them; with the
        # agent gone, the request fails before the guest is touched.
        image = guest_images.register_root(
            self.box, 'snapbox-quiesce', os_require_quiesce='yes')
        self.delete_image_later(image)
        # NOTE: the box's guest has no filesystem on a disk (its root is
        # the initramfs; its writer writes vda raw): the agent freezes
        # none, and the image is labelled crash-consistent, not quiesced.
        # (A freezable filesystem is frozen for real in the functional
        # test_consistency.TestQuiesce.)
        server = self.boot_writer(image=image)
        before = self.client.wait_for_seq(server, 20)
        # The agent answers (it runs the guest-exec).
        self.assertTrue(self.client.guest_exec(server,
                                               'pidof qemu-ga').strip())
        since = self.compute_log_end()
        snap = self.client.image_create(server['id'], 'quiesced')
        self.delete_image_later(snap['id'])
        snap = self.client.image(snap['id'])
        self.assertSnapshotImage(snap, server, before, base_image=image)
        self.assertEqual('crash',
                         snap['properties']['snapdriver_consistency'])
        self.assertServerBack(server, 'ACTIVE')
        self.assertEqual(1, len(self.compute_log_lines(
            server, 'Froze 0 guest filesystems (quiesce)', since)))
        self.assertEqual(1, len(self.compute_log_lines(
            server, 'Thawed the guest filesystems', since)))
        self.assertEqual('thawed', self.client.agent_command(
            server, 'guest-fsfreeze-status'))

        # Now stop the agent: os_require_quiesce cannot be honoured.
        self.client.guest_spawn(server, 'sleep 1; killall qemu-ga')
        self.client.wait_agent_gone(server)
        disk = os.path.join(self.client.instance_dir(server), 'disk')
        mtime = os.stat(disk).st_mtime_ns
        since = self.compute_log_end()
        image_id = self._post_create_image(server, 'no-agent')
        self.assertServerBack(server, 'ACTIVE')
        self._image_gone(image_id)
        failed = self.compute_log_lines(server, 'QuiesceRequired', since)
        self.assertTrue(failed, 'nova-compute logged no QuiesceRequired')
        self.assertEqual([], self.compute_log_lines(
            server, 'guest filesystems (quiesce)', since))
        self.assertEqual([], self.compute_log_lines(
            server, 'Beginning ', since))
        self._assert_no_job(server)
        self.assertNoSnapshotLeftovers()
        # Untouched: running the same writer run, never saved or copied.
        seq = self.client.console_seq(server)
        self.client.wait_for_seq(server, seq + 5, timeout=60)
        self.assertEqual(1, self.client.writer_starts(server))
        self.assertGreater(os.stat(disk).st_mtime_ns, mtime)


class KillComputeTest(base.BoxTestCase):
    """nova-compute SIGKILLed mid snapshot, then started again."""

    def _kill_mid_snapshot(self, strategies, expect, midway):
        if strategies:
            self.set_strategies(strategies)
        server = self.boot_writer()
        self.client.wait_for_seq(server, 20)
        boot_id = self.client.boot_id(server)
        dom = self.domain(server)
        since = self.compute_log_end()
        faults = SnapshotFaultsTest._post_create_image
        image_id = faults(self, server, 'killed')
        midway(dom)
        self.box.stop_process('nova-compute', timeout=10,
                              sig=signal.SIGKILL)
        self.assertTrue(self.compute_log_lines(
            server, 'Snapshot strategy %s chosen' % expect, since))
        # Started again with the default order (one restart less).
        self.box.state['strategies'] = None
        self.box.start_compute()
        # Nova's init_host clears the task; the driver's brings the guest
        # back (a cold one from its managed save: the same run goes on).
        self.assertServerBack(server, 'ACTIVE')
        dom = self.domain(server)
        self.assertEqual(libvirt.VIR_DOMAIN_JOB_NONE, dom.jobInfo()[0])
        self.assertEqual(0, dom.hasManagedSaveImage(0))
        self.assertEqual([], dom.listAllSnapshots(0))
        self.assertNoSnapshotLeftovers()
        # The same boot goes on (the console log starts afresh when the
        # domain starts again: Nova sets append='off').
        self.assertEqual(boot_id, self.client.boot_id(server))
        seq = self.client.console_seq(server)
        self.client.wait_for_seq(server, seq + 5, timeout=60)
        # The half-made image is Glance's to keep or delete; ours is gone.
        self.client.run(['openstack', 'image', 'delete', image_id],
                        check=False)
        # The next snapshot works.
        before = self.client.console_seq(server)
        image = self.client.image_create(server['id'], 'after-kill')
        self.delete_image_later(image['id'])
        self.assertSnapshotImage(self.client.image(image['id']), server,
                                 before)
        self.assertServerBack(server, 'ACTIVE')
        self.assertNoSnapshotLeftovers()

    def test_kill_mid_cold_snapshot(self):
        def managed_saved(dom):
            deadline = time.monotonic() + 120
            while not dom.hasManagedSaveImage(0):
                if time.monotonic() > deadline:
                    self.fail('the guest was not managed-saved in 120 s')
                time.sleep(POLL)
        self._kill_mid_snapshot(['cold-direct-extract'],
                                'cold-direct-extract', managed_saved)

    def test_kill_mid_live_snapshot(self):
        def job_running(dom):
            deadline = time.monotonic() + 120
            while dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                if time.monotonic() > deadline:
                    self.fail('no backup job on the domain in 120 s')
                time.sleep(POLL)
        # live-backup: the default order's first.
        self._kill_mid_snapshot(None, 'live-backup', job_running)
