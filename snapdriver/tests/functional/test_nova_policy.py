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

"""Per-flavor and per-image strategy policy and provenance, through Nova.

Nova's API, conductor, scheduler and compute run in-process on
``ServersTestBase`` (fakelibvirt, Nova's fake Glance), as in
test_nova_services: the flavor extra spec goes through nova-api and its
extra spec validators (our entry point must be installed: run through
tox), the image property through Nova's boot into the instance's system
metadata, and the provenance through our upload into the fake Glance.

fakelibvirt emulates managed save but no block job: a live strategy fails
there, which is what the "never stop my guests" tests need; the live
strategies' provenance is tested on real domains (test_provenance_real).
"""

import datetime
import time

import fixtures
from nova.api.validation.extra_specs import validators
from nova.compute import power_state
from nova import context
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.api import client
from nova.tests.functional.libvirt import base
from nova.virt.libvirt import utils as libvirt_utils
from sqlalchemy import exc as sqla_exc

from snapdriver import strategies
from snapdriver.tests.functional import test_nova_services as services

CONF = services.CONF

LIVE_ONLY = 'live-shallow-rebase'
PROVENANCE = ('snapdriver_strategy', 'snapdriver_point_in_time',
              'snapdriver_consistency', 'snapdriver_guest_downtime_ms')


def _when(value):
    return datetime.datetime.fromisoformat(value).timestamp()


class NovaPolicyTestCase(base.ServersTestBase):
    """The policy and the provenance through Nova's REST API."""

    # Borrowed helpers: they only use the attributes set in setUp.
    _guest = services.NovaServicesTestCase._guest
    _make_root_disk = services.NovaServicesTestCase._make_root_disk
    _domain_state = services.NovaServicesTestCase._domain_state
    _image_named = services.NovaServicesTestCase._image_named
    _wait_idle = services.NovaServicesTestCase._wait_idle
    _pause_server = services.NovaServicesTestCase._pause_server
    _setup_compute_service = (
        services.NovaServicesTestCase._setup_compute_service)

    def setUp(self):
        self.flags(api_paste_config=services.API_PASTE, group='wsgi')
        super().setUp()
        self.useFixture(fixtures.WarningsFilter([
            {'action': 'ignore', 'category': sqla_exc.SADeprecationWarning,
             'message': r'The noload\(\) option is deprecated'}]))
        self.flags(strategies=['live-shallow-rebase', 'cold-direct-extract',
                               'stock'], group='snapdriver')
        self.flags(free_space_margin_mb=0, group='snapdriver')
        self.useFixture(services.FaithfulManagedSave())
        self.useFixture(services.BlockInfo())
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.utils.file_open', services._file_open))
        self.flags(snapshots_directory=CONF.instances_path + '/snapshots',
                   group='libvirt')
        # Every managed save of any domain: "never stopped" is checked
        # against it.
        self.saves = []
        real_save = fakelibvirt.Domain.managedSave

        def managed_save(dom, flags):
            self.saves.append(dom.name())
            return real_save(dom, flags)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.managedSave', managed_save))
        # The properties of the update that carried the image data.
        self.upload_props = {}
        real_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            if data is not None:
                data.read()
                self.upload_props[image_id] = dict(
                    metadata.get('properties', {}))
            return real_update(context, image_id, metadata,
                               purge_props=purge_props)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.GlanceFixture.update',
            lambda _self, *a, **k: update(*a, **k)))
        self.start_compute()
        self.compute = self.computes['compute1']

    # helpers

    def _flavor(self, strategies=None):
        spec = ({'snapdriver:strategies': strategies}
                if strategies is not None else None)
        return self._create_flavor(memory_mb=512, vcpu=1, disk=1,
                                   ephemeral=0, extra_spec=spec)

    def _boot(self, flavor_id=None, image_uuid=None, name='srv'):
        server = self._create_server(name=name, flavor_id=flavor_id,
                                     image_uuid=image_uuid)
        self._make_root_disk(server)
        return server

    def _snapshot_ok(self, server, name, status='ACTIVE'):
        self._snapshot_server(server, name)
        self.notifier.wait_for_versioned_notifications(
            'instance.snapshot.end')
        server = self._wait_idle(server, status)
        return self._image_named(name)

    def _snapshot_fails(self, server, name, status='ACTIVE'):
        self._snapshot_server(server, name)
        (notification,) = self.notifier.wait_for_versioned_notifications(
            'compute.exception')
        self._wait_idle(server, status)
        self.assertEqual([], [i for i in self.glance.images.values()
                              if i['name'] == name])
        return notification['payload']['nova_object.data']

    def _assert_provenance(self, image, strategy, consistency, before,
                           after, downtime):
        props = self.upload_props[image['id']]
        self.assertEqual(strategy, props['snapdriver_strategy'])
        self.assertEqual(consistency, props['snapdriver_consistency'])
        when = _when(props['snapdriver_point_in_time'])
        self.assertTrue(before <= when <= after,
                        '%s not within the snapshot' % when)
        self.assertTrue(props['snapdriver_point_in_time'].endswith(
            '+00:00'), props['snapdriver_point_in_time'])
        ms = int(props['snapdriver_guest_downtime_ms'])
        if downtime:
            self.assertGreater(ms, 0)
        else:
            self.assertEqual(0, ms)
        # Stored on the image by that same update.
        for key in PROVENANCE:
            self.assertEqual(props[key], image['properties'][key])
        return props

    # nova-api: the extra spec validator

    def test_validator_is_in_novas_listing(self):
        validator = validators.VALIDATORS['snapdriver:strategies']
        self.assertIn('Installed strategies: %s'
                      % ', '.join(strategies.available_names()),
                      validator.description)

    def test_bad_extra_spec_is_a_400_in_strict_mode(self):
        flavor_id = self._flavor()
        self.admin_api.microversion = '2.86'
        e = self.assertRaises(
            client.OpenStackApiException, self.admin_api.post_extra_spec,
            flavor_id, {'extra_specs': {
                'snapdriver:strategies': 'live-backup,no-such'}})
        self.assertEqual(400, e.response.status_code)
        body = e.response.text
        self.assertIn('unknown strategies no-such', body)
        self.assertIn('Installed snapshot strategies: %s'
                      % ', '.join(strategies.available_names()), body)
        # An unknown key of our namespace too.
        e = self.assertRaises(
            client.OpenStackApiException, self.admin_api.post_extra_spec,
            flavor_id, {'extra_specs': {'snapdriver:strategy': 'stock'}})
        self.assertEqual(400, e.response.status_code)
        self.assertEqual({}, self.admin_api.get_extra_specs(flavor_id))

        self.admin_api.post_extra_spec(flavor_id, {'extra_specs': {
            'snapdriver:strategies': 'live-backup, stock'}})
        self.assertEqual({'snapdriver:strategies': 'live-backup, stock'},
                         self.admin_api.get_extra_specs(flavor_id))

    def test_before_2_86_the_spec_is_not_validated(self):
        # Nova's own rule: strict validation starts at 2.86. The compute
        # host still refuses the list at snapshot time.
        flavor_id = self._flavor()
        self.admin_api.microversion = '2.85'
        self.admin_api.post_extra_spec(flavor_id, {'extra_specs': {
            'snapdriver:strategies': 'no-such'}})

    # the policy on the compute host

    def test_live_only_flavor_never_stops_a_running_guest(self):
        # The host allows a cold strategy, the flavor does not: the live
        # one fails (fakelibvirt has no block jobs) and the snapshot fails
        # with the guest running, never managed-saved.
        server = self._boot(self._flavor(LIVE_ONLY))
        payload = self._snapshot_fails(server, 'snap')
        self.assertEqual('BlockJobFailed', payload['exception'])
        self.assertEqual([], self.saves)
        self.assertEqual(power_state.RUNNING, self._domain_state(server))

        # The same guest on the host's list is stopped for a cold
        # snapshot: the spy sees managed saves.
        other = self._boot(self._flavor('cold-direct-extract'),
                           name='other')
        self._snapshot_ok(other, 'snap-cold')
        self.assertEqual(1, len(self.saves))

    def test_live_only_flavor_when_no_live_strategy_applies(self):
        # Live snapshots disabled on the host: the host's list would fall
        # through to cold-direct-extract and stop the guest; the flavor's
        # list refuses instead, before the guest is touched.
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        server = self._boot(self._flavor(LIVE_ONLY))
        payload = self._snapshot_fails(server, 'snap')
        self.assertEqual('NoApplicableSnapshotStrategy',
                         payload['exception'])
        self.assertIn('disable_libvirt_livesnapshot',
                      payload['exception_message'])
        self.assertEqual([], self.saves)
        self.assertEqual(power_state.RUNNING, self._domain_state(server))

    def test_live_only_flavor_fails_cleanly_for_a_shut_off_guest(self):
        server = self._boot(self._flavor(LIVE_ONLY))
        server = self._stop_server(server)
        payload = self._snapshot_fails(server, 'snap', status='SHUTOFF')
        self.assertEqual('NoApplicableSnapshotStrategy',
                         payload['exception'])
        self.assertIn('live-shallow-rebase: ', payload['exception_message'])
        self.assertEqual([], self.saves)
        self.assertEqual(power_state.SHUTDOWN, self._domain_state(server))

    def test_flavor_outside_the_host_list_is_refused(self):
        # cold-internal is installed, not in [snapdriver] strategies.
        server = self._boot(self._flavor('cold-internal'))
        payload = self._snapshot_fails(server, 'snap')
        self.assertEqual('SnapshotStrategyNotAllowed', payload['exception'])
        self.assertIn('Allowed strategies: live-shallow-rebase, '
                      'cold-direct-extract, stock',
                      payload['exception_message'])
        self.assertEqual([], self.saves)

    def test_image_narrows(self):
        # The host tries live-shallow-rebase first (it would fail here);
        # the image asks for the cold one only.
        image = self._create_image(
            {'snapdriver_strategies': 'cold-direct-extract'})
        server = self._boot(image_uuid=image['id'])
        before = time.time()
        snap = self._snapshot_ok(server, 'snap')
        self._assert_provenance(snap, 'cold-direct-extract', 'cold',
                                before, time.time(), downtime=True)

    def test_image_cannot_widen_the_flavor(self):
        image = self._create_image(
            {'snapdriver_strategies': 'cold-direct-extract'})
        server = self._boot(self._flavor(LIVE_ONLY), image['id'])
        payload = self._snapshot_fails(server, 'snap')
        self.assertEqual('SnapshotStrategyNotAllowed', payload['exception'])
        self.assertIn('cold-direct-extract named by the image property '
                      'snapdriver_strategies', payload['exception_message'])
        self.assertIn('Allowed strategies: live-shallow-rebase.',
                      payload['exception_message'])
        self.assertEqual([], self.saves)
        self.assertEqual(power_state.RUNNING, self._domain_state(server))

    # provenance

    def test_provenance_cold_running_paused_and_shut_off(self):
        flavor_id = self._flavor('cold-direct-extract')
        server = self._boot(flavor_id)
        before = time.time()
        snap = self._snapshot_ok(server, 'running')
        self._assert_provenance(snap, 'cold-direct-extract', 'cold',
                                before, time.time(), downtime=True)

        server = self._pause_server(server)
        before = time.time()
        snap = self._snapshot_ok(server, 'paused', 'PAUSED')
        self._assert_provenance(snap, 'cold-direct-extract', 'cold',
                                before, time.time(), downtime=True)

        self.api.post_server_action(server['id'], {'unpause': None})
        server = self._wait_for_state_change(server, 'ACTIVE')
        server = self._stop_server(server)
        before = time.time()
        snap = self._snapshot_ok(server, 'off', 'SHUTOFF')
        self._assert_provenance(snap, 'cold-direct-extract', 'cold',
                                before, time.time(), downtime=False)

    def test_snapshot_of_a_server_booted_from_a_snapshot(self):
        # An image as one of our snapshots would look, with provenance
        # that must not survive into the next snapshot, and the user's
        # choice that must.
        stale = {'snapdriver_strategy': 'live-backup',
                 'snapdriver_point_in_time': '2001-01-01T00:00:00+00:00',
                 'snapdriver_consistency': 'filesystem-quiesced',
                 'snapdriver_guest_downtime_ms': '0',
                 'snapdriver_strategies': 'cold-direct-extract,stock'}
        image = self._create_image(stale)
        server = self._boot(image_uuid=image['id'])
        sysmeta_keys = self._sysmeta_keys(server)
        self.assertIn('image_snapdriver_point_in_time', sysmeta_keys)
        before = time.time()
        snap = self._snapshot_ok(server, 'snap')
        self._assert_provenance(
            snap, 'cold-direct-extract', 'cold', before, time.time(),
            downtime=True)
        # Nova's API copied the user's choice into the new image record;
        # our upload left it there.
        self.assertEqual('cold-direct-extract,stock',
                         snap['properties']['snapdriver_strategies'])

    def _sysmeta_keys(self, server):
        ctxt = context.get_admin_context()
        with context.target_cell(
                ctxt, self.cell_mappings['cell1']) as cctxt:
            inst = objects.Instance.get_by_uuid(
                cctxt, server['id'], expected_attrs=['system_metadata'])
        return set(inst.system_metadata)

    def test_stock_says_unknown_not_stale(self):
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        image = self._create_image(
            {'snapdriver_strategy': 'cold-direct-extract',
             'snapdriver_point_in_time': '2001-01-01T00:00:00+00:00',
             'snapdriver_consistency': 'cold',
             'snapdriver_guest_downtime_ms': '12'})
        server = self._boot(self._flavor('stock'), image['id'])
        disk = libvirt_utils.find_disk(self._guest(server))[0]
        root = self.compute.driver.image_backend.by_libvirt_path(
            objects.Instance(uuid=server['id']), disk, image_type='raw')
        root.snapshot_extract.side_effect = (
            lambda target, out_format: libvirt_utils.extract_snapshot(
                disk, 'raw', target, out_format))
        snap = self._snapshot_ok(server, 'snap')
        self.assertEqual({'snapdriver_strategy': 'stock',
                          'snapdriver_point_in_time': 'unknown',
                          'snapdriver_consistency': 'unknown',
                          'snapdriver_guest_downtime_ms': 'unknown'},
                         {k: self.upload_props[snap['id']][k]
                          for k in PROVENANCE})

    def test_live_only_flavor_cannot_shelve(self):
        # Shelve powers the guest off, then snapshots it: a list with no
        # strategy for a shut-off guest makes the shelve fail, cleanly.
        # (Documented in doc/source/per-workload.rst.)
        server = self._boot(self._flavor(LIVE_ONLY))
        # NOTE: the functional base runs RPC casts as calls, so the compute
        # failure reaches the API call here; a real nova-api answers 202
        # and the failure shows in the instance actions.
        e = self.assertRaises(client.OpenStackApiException,
                              self.api.post_server_action, server['id'],
                              {'shelve': {}})
        self.assertIn('NoApplicableSnapshotStrategy', str(e))
        server = self._wait_for_server_parameter(
            server, {'OS-EXT-STS:task_state': None}, max_retries=40)
        # Nova's own handling of a failed shelve snapshot: the server stays
        # ACTIVE with the guest shelve powered off (until Nova's power
        # state sync); the snapshot itself never managed-saved anything.
        self.assertEqual('ACTIVE', server['status'])
        self.assertEqual(power_state.SHUTDOWN, self._domain_state(server))
        self.assertEqual([], self.saves)
