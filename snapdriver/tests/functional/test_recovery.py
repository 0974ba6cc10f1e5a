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

"""nova-compute is SIGKILLed while a cold snapshot holds the guest
managed-saved: the next service start (or the next snapshot of the
instance) gives the guest back the state it had.

The compute process is a child running the real driver's ``snapshot()``
with ``cold-direct-extract``; its copy never ends, so the kill always
lands after the managed save and before the restore. Without the journal
(issue 13) the domain stays shut off with its managed save, as with the
stock driver.
"""

import os
import signal
import subprocess
import sys
import time
import types

import libvirt
from nova.virt import fake as fake_virt
import testscenarios

from snapdriver import conf
from snapdriver import driver
from snapdriver import journal
from snapdriver import qemu_img
from snapdriver.strategies import cold_internal
from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real

load_tests = testscenarios.load_tests_apply_scenarios
CONF = conf.CONF

_MODULE = 'snapdriver.tests.functional.test_recovery'


def _snapshot_in_child(uuid, snapshots_directory, uploads_directory):
    """Be the compute process the tests kill.

    A cold snapshot whose copy never ends.
    """
    CONF([], project='nova')
    CONF.set_override('connection_uri', real.LIBVIRT_URI, 'libvirt')
    CONF.set_override('virt_type', 'kvm' if real.kvm_usable() else 'qemu',
                      'libvirt')
    CONF.set_override('snapshots_directory', snapshots_directory, 'libvirt')
    CONF.set_override('strategies', ['cold-direct-extract'], 'snapdriver')
    # The parent test's lock path (DriverTestCase: beside the snapshots
    # directory), so that its service-start cleanup sees our lock.
    CONF.set_override('lock_path', os.path.join(
        os.path.dirname(snapshots_directory), 'locks'), 'oslo_concurrency')

    from snapdriver import qemu_img

    def endless_convert(*args, **kwargs):
        while True:
            time.sleep(60)
    qemu_img.convert = endless_convert
    drv = driver.LibvirtSnapshotDriver(fake_virt.FakeVirtAPI(), False)
    drv._image_api = base.FakeImageService(uploads_directory)
    instance = base.DriverTestCase.make_instance(
        None, types.SimpleNamespace(uuid=uuid))
    drv.snapshot(None, instance, 'image-child', lambda **kw: None)


class KilledColdSnapshotTestCase(base.DriverTestCase):

    scenarios = [
        ('running-service-restart', {'state': 'running',
                                     'cleaner': 'init_host'}),
        ('paused-service-restart', {'state': 'paused',
                                    'cleaner': 'init_host'}),
        ('running-next-snapshot', {'state': 'running',
                                   'cleaner': 'snapshot'}),
    ]

    def kill_mid_snapshot(self, domain):
        out = open(os.path.join(self.workdir, 'child.log'), 'wb')
        self.addCleanup(out.close)
        child = subprocess.Popen(
            [sys.executable, '-m', _MODULE, domain.uuid,
             self.snapshots_directory, self.uploads_directory],
            stdout=out, stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.dirname(os.path.abspath(__file__))))))
        self.addCleanup(lambda: child.poll() is None and child.kill())
        deadline = time.monotonic() + 120
        while not (domain.has_managed_save() and
                   domain.state() == 'shutoff'):
            if child.poll() is not None:
                with open(out.name, 'rb') as f:
                    self.fail('the child ended early: %s' % f.read()[-3000:])
            self.assertLess(time.monotonic(), deadline,
                            'the child never managed-saved the guest')
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        self.assertEqual(-signal.SIGKILL, child.wait(30))

    def test_guest_state_given_back(self):
        self.flags(strategies=['cold-direct-extract'], group='snapdriver')
        domain = self.make_domain(self.state)
        self.kill_mid_snapshot(domain)

        # What the killed process left: the guest shut off with its
        # managed save (the stock driver's outcome too), and our entry.
        self.assertEqual('shutoff', domain.state())
        self.assertTrue(domain.has_managed_save())
        entries = os.listdir(journal.directory(self.snapshots_directory))
        self.assertEqual(['%s.json' % domain.uuid], entries)

        if self.cleaner == 'init_host':
            self.driver._clean_snapshot_leftovers()
            self.assertEqual(self.state, domain.state())
            self.assertFalse(domain.has_managed_save())
            self.assertTrue(domain.is_persistent())
            self.assertEqual([], os.listdir(self.snapshots_directory))
            self.snapshot(domain)
        else:
            self.snapshot(domain)
        self.assert_image_equals_disk('image-1', 'qcow2', domain)
        self.assert_guest_intact(domain, self.state)


class NotOursTestCase(base.DriverTestCase):

    def test_operator_managed_save_is_left_alone(self):
        domain = self.make_domain('running')
        domain.dom.managedSave(0)
        self.driver._clean_snapshot_leftovers()
        self.assertEqual('shutoff', domain.state())
        self.assertTrue(domain.has_managed_save())
        domain.dom.managedSaveRemove(0)

    def test_entry_of_a_live_process_is_left_alone(self):
        # A snapshot that runs in another process (the snapdriver command)
        # owns its entry: recovery must not restore its guest mid-copy.
        domain = self.make_domain('running')
        domain.dom.managedSave(0)
        self.addCleanup(lambda: domain.has_managed_save() and
                        domain.dom.managedSaveRemove(0))
        sleeper = subprocess.Popen(['sleep', '60'])
        self.addCleanup(sleeper.kill)
        request = types.SimpleNamespace(
            uuid=domain.uuid, name=domain.name,
            snapshots_directory=self.snapshots_directory)
        path = os.path.join(journal.directory(self.snapshots_directory),
                            '%s.json' % domain.uuid)
        os.makedirs(os.path.dirname(path), 0o700)
        journal._write(path, {
            'uuid': request.uuid, 'name': request.name,
            'action': journal.MANAGED_SAVE, 'state': 'running',
            'pid': sleeper.pid,
            'pid_start': journal._process_start(sleeper.pid)})
        self.assertEqual([], journal.recover(domain.conn,
                                             self.snapshots_directory))
        self.assertEqual('shutoff', domain.state())
        self.assertTrue(os.path.exists(path))
        # Once that process is gone, the entry is an orphan: restored.
        sleeper.kill()
        sleeper.wait()
        self.assertEqual(1, len(journal.recover(domain.conn,
                                                self.snapshots_directory)))
        self.assertEqual('running', domain.state())
        self.assertFalse(os.path.exists(path))
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING_RESTORED,
                         domain.dom.state()[1])


if __name__ == '__main__':
    _snapshot_in_child(*sys.argv[1:])


class RunningGuestLeftoverTestCase(base.DriverTestCase):
    """What a cold-internal snapshot killed after its early restore leaves.

    The guest runs again and its disk holds our internal snapshot (and, if
    the kill came between the record's definition and the delete, libvirt's
    record of it): the service start deletes both through libvirt.
    """

    def _left(self, record):
        domain = self.make_domain('running')
        domain.dom.managedSave(0)
        qemu_img.snapshot_create(domain.disk_path, 'snapdriver-left',
                                 'qcow2')
        domain.dom.create()
        if record:
            request = types.SimpleNamespace(
                guest=types.SimpleNamespace(_domain=domain.dom))
            cold_internal._record(request, 'snapdriver-left')
        self.assertEqual(['snapdriver-left'], [
            s['name'] for s in real.internal_snapshots(domain.disk_path,
                                                       force_share=True)])
        return domain

    def assert_cleaned(self, domain):
        self.driver._clean_snapshot_leftovers()
        self.assertEqual('running', domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertEqual([], real.internal_snapshots(domain.disk_path,
                                                     force_share=True))
        self.assertEqual([], domain.dom.listAllSnapshots(0))

    def test_internal_snapshot_of_a_running_guest(self):
        self.assert_cleaned(self._left(record=False))

    def test_record_and_snapshot_of_a_running_guest(self):
        domain = self._left(record=True)
        self.assertEqual(1, len(domain.dom.listAllSnapshots(0)))
        self.assert_cleaned(domain)
