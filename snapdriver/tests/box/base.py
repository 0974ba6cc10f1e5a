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

"""Scenario tests on the box: real guests that Nova booted.

One box per test process, started by the first test that needs it and
removed when the process exits (``tox -e box-scenario`` runs the tests in
one process). With ``SNAPDRIVER_BOX_DIR`` naming a box that is already up
(``snapdriver box start``), the tests use it and leave it running.
"""

import atexit
import os
import threading

import libvirt
import testtools

from snapdriver.box import client as box_client
from snapdriver.box import services
from snapdriver.tests.functional import writer_guest

_BOX = {}
_LOCK = threading.Lock()


def _quiet(_ctx, _err):
    pass


def shared_box():
    """The process's box: the one in SNAPDRIVER_BOX_DIR, or a new one."""
    with _LOCK:
        if 'box' in _BOX:
            return _BOX['box']
        if 'error' in _BOX:
            raise services.BoxError('the box failed to start earlier: %s'
                                    % _BOX['error'])
        given = os.environ.get('SNAPDRIVER_BOX_DIR')
        if given:
            box = services.Box(given)
            if box.load() and box.state.get('ready'):
                _BOX['box'] = box
                return box
        box = services.Box('/var/tmp/snapdriver-box-tests-%d' % os.getpid())
        try:
            box.start()
        except Exception as e:
            _BOX['error'] = str(e)
            raise
        atexit.register(box.stop)
        _BOX['box'] = box
        return box


class BoxTestCase(testtools.TestCase):
    """A test against the shared box, with the client of a second shell."""

    def setUp(self):
        super().setUp()
        reason = (services.unavailable_reason() or
                  writer_guest.guest_unavailable_reason())
        if reason:
            self.skipTest(reason)
        self.box = shared_box()
        self.client = box_client.BoxClient(self.box)
        libvirt.registerErrorHandler(_quiet, None)

    # -- helpers -------------------------------------------------------

    def boot_writer(self, name=None, **kwargs):
        """Boot the writer guest; return the server once it writes.

        :param kwargs: ``image``, ``flavor`` for :meth:`BoxClient.boot`.
        """
        name = name or self.id().rsplit('.', 1)[-1][:40]
        server = self.client.boot(name, **kwargs)
        self.addCleanup(self._delete_quietly, server['id'])
        self.assertEqual('ACTIVE', server['status'])
        self.client.wait_for_seq(server, 1)
        return server

    def _delete_quietly(self, server_id):
        try:
            self.client.delete_server(server_id, wait=True)
        except box_client.ClientError:
            pass

    def delete_image_later(self, image_id):
        self.addCleanup(self.client.run, ['openstack', 'image', 'delete',
                                          image_id], check=False)

    def domain(self, server):
        conn = libvirt.open(services.LIBVIRT_URI)
        self.addCleanup(conn.close)
        return conn.lookupByName(self.client.domain_name(server))

    def image_path(self, image):
        path = os.path.join(self.box.dir, 'test-%s' % image['id'])
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return self.client.image_save(image['id'], path)

    def assertSnapshotImage(self, image, server, min_blocks,
                            image_type='snapshot', base_image=None):
        """Image ACTIVE with Nova's properties, holding a writer prefix.

        :returns: ``(n, run_id)`` of the writer blocks in the image.
        """
        self.assertEqual('active', image['status'])
        props = image['properties']
        self.assertEqual(image_type, props.get('image_type'))
        self.assertEqual(server['id'], props.get('instance_uuid'))
        self.assertEqual(base_image or self.box.state['images']['root'],
                         props.get('base_image_ref'))
        self.assertEqual(self.box.state['images']['kernel'],
                         props.get('kernel_id'))
        n, run_id = writer_guest.scan_image(self.image_path(image),
                                            image['disk_format'])
        self.assertGreaterEqual(n, min_blocks)
        return n, run_id

    def assertServerBack(self, server, status, persistent=True):
        """The server is in ``status`` with no task; the domain is too."""
        server = self.client.wait_for_server(server['id'], status,
                                             timeout=60)
        self.assertIsNone(server.get('OS-EXT-STS:task_state'))
        dom = self.domain(server)
        self.assertEqual(persistent, bool(dom.isPersistent()))
        expected = {
            'ACTIVE': libvirt.VIR_DOMAIN_RUNNING,
            'PAUSED': libvirt.VIR_DOMAIN_PAUSED,
            'SUSPENDED': libvirt.VIR_DOMAIN_SHUTOFF,
            'SHUTOFF': libvirt.VIR_DOMAIN_SHUTOFF,
        }[status]
        self.assertEqual(expected, dom.state()[0])
        if status == 'SUSPENDED':
            self.assertTrue(dom.hasManagedSaveImage(0))
        return server

    def assertNoSnapshotLeftovers(self):
        path = self.box.snapshots_path
        left = os.listdir(path) if os.path.isdir(path) else []
        self.assertEqual([], left)

    def compute_log_lines(self, server, text, since=0):
        """nova-compute's log lines about ``server`` holding ``text``.

        :param since: a byte offset in the log (see :meth:`compute_log_end`).
        """
        with open(self.box.log('nova-compute'), 'rb') as f:
            f.seek(since)
            data = f.read().decode('utf-8', 'replace')
        return [ln for ln in data.splitlines()
                if text in ln and server['id'] in ln]

    def compute_log_end(self):
        return os.path.getsize(self.box.log('nova-compute'))

    def set_strategies(self, strategies):
        """Restart nova-compute with ``[snapdriver] strategies``.

        The default order comes back when the test ends.
        """
        if strategies == self.box.state.get('strategies'):
            return
        self.box.restart_compute(strategies)
        self.addCleanup(self._default_strategies)

    def _default_strategies(self):
        if self.box.state.get('strategies') is not None:
            self.box.restart_compute(None)
