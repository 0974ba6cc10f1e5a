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

"""End to end through a real Glance API.

``LibvirtSnapshotDriver.snapshot()`` uploads with Nova's own image API
(``nova.image.glance.API``) over HTTP to a Glance served by gunicorn; the
image is downloaded back from Glance and compared with the disk. The last
test runs the ``snapdriver driver-demo`` command itself.
"""

import io
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import fixtures
import libvirt
from nova import exception as nova_exception
from nova.image import glance as nova_glance

from snapdriver.cmd import cli
from snapdriver import demo
from snapdriver import qemu_img
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import glance_fixture


class GlanceTestCase(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        reason = glance_fixture.glance_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.glance = self.useFixture(glance_fixture.GlanceAPI())
        self.flags(api_servers=[self.glance.endpoint], group='glance')
        # The driver's own image API, unchanged: LibvirtDriver makes a
        # nova.image.glance.API; the base class had swapped in a fake.
        self.image_api = nova_glance.API()
        self.driver._image_api = self.image_api
        self.context = demo.make_context()
        self.downloads = os.path.join(self.workdir, 'downloads')
        os.mkdir(self.downloads, 0o700)

    def create_image(self, name):
        image = self.image_api.create(self.context, {'name': name})
        self.assertEqual('queued', image['status'])
        return image['id']

    def assert_glance_image_equals_disk(self, image_id, fmt, domain):
        meta = self.image_api.get(self.context, image_id)
        self.assertEqual('active', meta['status'])
        self.assertEqual(fmt, meta['disk_format'])
        self.assertEqual('bare', meta['container_format'])
        path = os.path.join(self.downloads, image_id)
        self.image_api.download(self.context, image_id, dest_path=path)
        self.assertEqual(meta['size'], os.path.getsize(path))
        self.assertTrue(
            real.images_equal(path, fmt, domain.images.reference_path, 'raw'),
            'the image in Glance differs from the disk content')
        self.assertIsNone(qemu_img.info(path, fmt).backing_file)
        # And it really is in Glance's file store.
        self.assertIn(image_id, self.glance.image_files())

    def test_live_snapshot_of_running_guest(self):
        self.flags(strategies=['live-shallow-rebase'], group='snapdriver')
        self.flags(snapshot_image_format='qcow2', group='libvirt')
        domain = self.make_domain('running')
        image_id = self.create_image('live')

        calls, sampler = self.snapshot(domain, image_id=image_id,
                                       sample=True)

        self.assert_task_states(calls)
        self.assert_glance_image_equals_disk(image_id, 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assertEqual({'running'}, sampler.states)
        self.assertEqual(0, sampler.transient_samples)

    def test_cold_snapshot_of_shut_off_guest(self):
        self.flags(strategies=['cold-direct-extract'], group='snapdriver')
        self.flags(snapshot_image_format='raw', group='libvirt')
        domain = self.make_domain('shutoff')
        image_id = self.create_image('cold')

        calls, _sampler = self.snapshot(domain, image_id=image_id)

        self.assert_task_states(calls)
        self.assert_glance_image_equals_disk(image_id, 'raw', domain)
        self.assert_guest_intact(domain, 'shutoff')

    def test_cold_snapshot_of_paused_guest(self):
        self.flags(strategies=['cold-direct-extract'], group='snapdriver')
        self.flags(snapshot_image_format='qcow2', group='libvirt')
        domain = self.make_domain('paused')
        image_id = self.create_image('cold-paused')

        calls, _sampler = self.snapshot(domain, image_id=image_id)

        self.assert_task_states(calls)
        self.assert_glance_image_equals_disk(image_id, 'qcow2', domain)
        self.assert_guest_intact(domain, 'paused')

    def test_image_deleted_in_glance_before_snapshot(self):
        domain = self.make_domain('running')
        image_id = self.create_image('deleted')
        self.image_api.delete(self.context, image_id)

        self.assertRaises(nova_exception.ImageNotFound, self.snapshot,
                          domain, image_id=image_id)
        self.assert_guest_intact(domain, 'running')
        self.assertEqual([], self.glance.image_files())


class DemoCommandTestCase(base.DriverTestCase):
    """``snapdriver driver-demo`` end to end, on a small disk."""

    def setUp(self):
        super().setUp()
        reason = glance_fixture.glance_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.cmd.cli.setup_logging', lambda *a, **kw: None))
        self.conf_file = os.path.join(self.workdir, 'nova.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[DEFAULT]\n')

    def test_demo(self):
        out = io.StringIO()
        rc = cli.main(['--config-file', self.conf_file, 'driver-demo',
                       '--strategy', 'live-shallow-rebase',
                       '--strategy', 'cold-direct-extract',
                       '--state', 'running', '--state', 'shutoff',
                       '--size-mib', '32'], out=out)
        text = out.getvalue()
        self.assertEqual(0, rc, text)
        rows = {}
        for line in text.splitlines():
            words = line.split()
            if len(words) > 2 and words[0] in ('live-shallow-rebase',
                                               'cold-direct-extract'):
                rows[(words[0], words[1])] = line
        self.assertEqual(4, len(rows), text)
        for key in (('live-shallow-rebase', 'running'),
                    ('cold-direct-extract', 'running'),
                    ('cold-direct-extract', 'shutoff')):
            self.assertTrue(rows[key].endswith('  yes'), rows[key])
        self.assertIn('n/a: the guest is shut off',
                      rows[('live-shallow-rebase', 'shutoff')])
        self.assertIn('3 snapshots through Glance, 3 verified, 0 failed; '
                      '1 combinations do not apply', text)

        self.assert_all_removed(text)

    def assert_all_removed(self, text):
        """Everything the demo made is gone: domain, Glance, files."""
        name = re.search(r'Throwaway domain (\S+):', text).group(1)
        endpoint = re.search(r'on (http://127\.0\.0\.1:\d+)', text).group(1)
        conn = libvirt.open(real.LIBVIRT_URI)
        self.addCleanup(conn.close)
        self.assertNotIn(name, [d.name() for d in conn.listAllDomains(0)])
        self.assertRaises(urllib.error.URLError, urllib.request.urlopen,
                          endpoint + '/versions', timeout=5)
        workdir = re.search(r'Work directory (\S+)', text).group(1)
        self.assertFalse(os.path.exists(workdir))

    def test_ctrl_c_removes_everything(self):
        errors = os.path.join(self.workdir, 'stderr')
        with open(errors, 'w') as stderr:
            proc = subprocess.Popen(
                [sys.executable, '-m', 'snapdriver.cmd.cli',
                 '--config-file', self.conf_file, 'driver-demo',
                 '--strategy', 'cold-direct-extract', '--size-mib', '32'],
                stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.addCleanup(proc.kill)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            # Glance runs, the domain exists: press Ctrl-C.
            if line.startswith('Throwaway domain'):
                proc.send_signal(signal.SIGINT)
        proc.wait(300)
        text = ''.join(lines)
        with open(errors) as f:
            err = f.read()

        self.assertEqual(130, proc.returncode, text + err)
        self.assertIn('interrupted: cleaning up', text)
        self.assertIn('0 snapshots through Glance', text)
        self.assert_all_removed(text)
