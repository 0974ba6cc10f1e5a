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

"""The helpers of base.py fail when what they check is wrong."""

import fixtures
import libvirt
from oslo_utils import uuidutils

from snapdriver.tests.functional import base
from snapdriver.tests.functional import fixtures as real
from snapdriver.tests.functional import test_real_domain


class StateSamplerTestCase(base.DriverTestCase):

    def test_samples_bracket_the_window(self):
        domain = self.make_domain('running')
        sampler = base.StateSampler(domain.uuid)
        sampler.start()
        # start() returned after the first sample.
        self.assertGreaterEqual(sampler.samples, 1)
        self.assertEqual({'running'}, sampler.states)
        domain.dom.suspend()
        sampler.stop()
        # The last sample was taken after stop() was called.
        self.assertIn('paused', sampler.states)
        self.assertGreaterEqual(sampler.samples, 2)

    def test_an_empty_window_fails(self):
        domain = self.make_domain('running')
        sampler = base.StateSampler(domain.uuid, interval=3600)
        sampler.start()
        sampler.stop()
        # One sample before, one after, none while "the snapshot" ran.
        self.assertEqual(2, sampler.samples)
        self.assertRaises(AssertionError, self.assert_sampled_throughout,
                          sampler)

    def test_unknown_domain_fails_start(self):
        sampler = base.StateSampler(uuidutils.generate_uuid())
        e = self.assertRaises(AssertionError, sampler.start)
        self.assertIn('state sampler', str(e))
        self.assertIn('failed', str(e))

    def test_libvirt_error_fails_stop(self):
        domain = self.make_domain('running')
        real_state = libvirt.virDomain.state
        calls = []

        def failing_state(dom, *args, **kwargs):
            calls.append(1)
            if len(calls) > 2:
                raise libvirt.libvirtError('injected sampler failure')
            return real_state(dom, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch('libvirt.virDomain.state',
                                             failing_state))
        sampler = base.StateSampler(domain.uuid)
        sampler.start()
        sampler.join(60)
        e = self.assertRaises(AssertionError, sampler.stop)
        self.assertIn('injected sampler failure', str(e))

    def test_a_vanished_domain_is_a_state(self):
        domain = self.make_domain('running')
        sampler = base.StateSampler(domain.uuid)
        sampler.start()
        domain.dom.undefine()
        domain.dom.destroy()
        sampler.stop()
        self.assertIn('gone', sampler.states)


class AssertGuestIntactTestCase(base.DriverTestCase):

    def test_intact_guest_passes(self):
        domain = self.make_domain('shutoff')
        self.assert_guest_intact(domain, 'shutoff')

    def test_leaked_cluster_fails(self):
        domain = self.make_domain('shutoff')
        test_real_domain.leak_a_cluster(domain.disk_path)
        e = self.assertRaises(AssertionError, self.assert_guest_intact,
                              domain, 'shutoff')
        self.assertIn('1 leaked clusters', str(e))

    def test_changed_content_fails(self):
        domain = self.make_domain('shutoff')
        real._execute('qemu-io', '-f', 'qcow2', '-c',
                      'write -q -P 0x55 0 4096', domain.disk_path)
        e = self.assertRaises(AssertionError, self.assert_guest_intact,
                              domain, 'shutoff')
        self.assertIn('the disk content changed', str(e))
