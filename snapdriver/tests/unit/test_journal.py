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

"""Tests of snapdriver.journal: entries on a real temp dir, fake libvirt."""

import json
import os
from unittest import mock

import fixtures
import libvirt
from oslo_config import fixture as config_fixture
from oslotest import base

from snapdriver import conf
from snapdriver import journal
from snapdriver.tests.unit import fakes

CONF = conf.CONF
UUID = fakes.make_request().uuid


class FakeDom(object):
    def __init__(self, active=False, managed_save=True):
        self.active = active
        self.managed_save = managed_save
        self.started = []

    def isActive(self):
        return self.active

    def hasManagedSaveImage(self, flags):
        return self.managed_save

    def createWithFlags(self, flags):
        self.started.append(flags)
        self.active = True
        self.managed_save = False

    def jobStats(self, flags):
        return {'type': libvirt.VIR_DOMAIN_JOB_NONE}


class SavingDom(FakeDom):
    """A domain libvirtd is still managed-saving for a killed process."""

    def __init__(self, polls):
        super().__init__(active=True, managed_save=False)
        self.polls = polls

    def jobStats(self, flags):
        if self.polls == 0:
            return super().jobStats(flags)
        self.polls -= 1
        if self.polls == 0:
            # The save ends.
            self.active = False
            self.managed_save = True
        return {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE}


class FakeConn(object):
    def __init__(self, doms):
        self.doms = doms

    def lookupByUUIDString(self, uuid):
        if uuid not in self.doms:
            raise libvirt.libvirtError('no domain')
        return self.doms[uuid]


class JournalTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.conf.config(host='compute-1')
        self.snapdir = self.useFixture(fixtures.TempDir()).path
        self.guest = mock.Mock()
        self.request = fakes.make_request(guest=self.guest,
                                          snapshots_directory=self.snapdir)
        self.jdir = journal.directory(self.snapdir)

    def entries(self):
        if not os.path.isdir(self.jdir):
            return []
        return os.listdir(self.jdir)

    def test_directory_is_per_host(self):
        self.assertEqual(os.path.join(self.snapdir,
                                      '.snapdriver-journal-compute-1'),
                         self.jdir)

    def test_entry_exists_during_the_block_only(self):
        with journal.recorded(self.request, paused=True):
            with open(os.path.join(self.jdir, UUID + '.json')) as f:
                entry = json.load(f)
            self.assertEqual('paused', entry['state'])
            self.assertEqual(os.getpid(), entry['pid'])
            self.assertEqual(0o700, os.stat(self.jdir).st_mode & 0o777)
        # Nothing of ours is left when nothing needs undoing.
        self.assertEqual([], os.listdir(self.snapdir))

    def test_entry_kept_when_the_guest_was_not_restored(self):
        self.guest.is_active.return_value = False
        self.assertRaises(RuntimeError, self._fail_inside)
        self.assertEqual([UUID + '.json'], self.entries())

    def test_entry_dropped_when_there_is_no_managed_save(self):
        # The guest shut itself down before the save: nothing to restore.
        self.guest.is_active.return_value = False
        self.guest._domain.hasManagedSaveImage.return_value = 0
        self.assertRaises(RuntimeError, self._fail_inside)
        self.assertEqual([], os.listdir(self.snapdir))

    def test_entry_dropped_when_the_guest_runs_after_a_failure(self):
        self.guest.is_active.return_value = True
        self.assertRaises(RuntimeError, self._fail_inside)
        self.assertEqual([], os.listdir(self.snapdir))

    def _fail_inside(self):
        with journal.recorded(self.request, paused=False):
            raise RuntimeError('killed')

    def _orphan(self, state='running'):
        self.guest.is_active.return_value = False
        with mock.patch('os.getpid', return_value=1 << 30):
            try:
                with journal.recorded(self.request,
                                      paused=state == 'paused'):
                    raise RuntimeError('killed')
            except RuntimeError:
                pass

    def test_recover_restores_running_and_paused(self):
        for state, flags in (('running', 0),
                             ('paused', libvirt.VIR_DOMAIN_START_PAUSED)):
            self._orphan(state)
            dom = FakeDom()
            done = journal.recover(FakeConn({UUID: dom}), self.snapdir)
            self.assertEqual([flags], dom.started)
            self.assertEqual(1, len(done))
            self.assertIn(state, done[0])
            self.assertEqual([], os.listdir(self.snapdir))

    def test_recover_leaves_an_active_or_unsaved_domain(self):
        for dom in (FakeDom(active=True), FakeDom(managed_save=False)):
            self._orphan()
            self.assertEqual([], journal.recover(FakeConn({UUID: dom}),
                                                 self.snapdir))
            self.assertEqual([], dom.started)
            self.assertEqual([], self.entries())

    def test_recover_waits_for_a_save_that_still_runs(self):
        self.useFixture(fixtures.MockPatch('time.sleep'))
        self._orphan('paused')
        dom = SavingDom(polls=3)
        done = journal.recover(FakeConn({UUID: dom}), self.snapdir)
        self.assertEqual([libvirt.VIR_DOMAIN_START_PAUSED], dom.started)
        self.assertEqual(1, len(done))
        self.assertEqual([], self.entries())

    def test_recover_waits_for_a_save_at_most_save_wait(self):
        self.useFixture(fixtures.MockPatch('time.sleep'))
        self.useFixture(fixtures.MockPatchObject(journal, 'SAVE_WAIT', -1))
        self._orphan()
        dom = SavingDom(polls=-1)
        with mock.patch.object(journal.LOG, 'warning') as warning:
            self.assertEqual([], journal.recover(FakeConn({UUID: dom}),
                                                 self.snapdir))
        self.assertEqual([], dom.started)
        self.assertIn('virsh start', warning.call_args[0][0])

    def test_recover_drops_the_entry_of_a_vanished_domain(self):
        self._orphan()
        self.assertEqual([], journal.recover(FakeConn({}), self.snapdir))
        self.assertEqual([], self.entries())

    def test_recover_of_one_uuid_leaves_the_others(self):
        self._orphan()
        other = fakes.replace(self.request,
                              uuid='0b7c9f52-8f3a-4d8e-9a57-6f0d3c5e1a22')
        with mock.patch('os.getpid', return_value=1 << 30):
            try:
                with journal.recorded(other, paused=False):
                    raise RuntimeError('killed')
            except RuntimeError:
                pass
        dom = FakeDom()
        journal.recover(FakeConn({UUID: dom}), self.snapdir, uuid=UUID)
        self.assertEqual([other.uuid + '.json'], self.entries())

    def test_unreadable_entry_is_removed(self):
        os.makedirs(self.jdir)
        with open(os.path.join(self.jdir, UUID + '.json'), 'w') as f:
            f.write('{not json')
        self.assertEqual([], journal.recover(FakeConn({}), self.snapdir))
        self.assertEqual([], self.entries())

    def test_no_journal_no_work(self):
        conn = mock.Mock()
        self.assertEqual([], journal.recover(conn, self.snapdir))
        conn.lookupByUUIDString.assert_not_called()
