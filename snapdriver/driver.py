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

"""LibvirtSnapshotDriver: the stock libvirt driver with pluggable snapshots.

Enable with ``compute_driver = snapdriver.LibvirtSnapshotDriver`` in
nova.conf. Everything but ``snapshot()`` is inherited unchanged.
"""

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import utils as libvirt_utils
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils

from snapdriver import conf
from snapdriver import guest_state
from snapdriver import journal
from snapdriver import policy
from snapdriver import provenance
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver import strategies
from snapdriver.strategies import base

LOG = logging.getLogger(__name__)
CONF = conf.CONF


class LibvirtSnapshotDriver(libvirt_driver.LibvirtDriver):
    """A LibvirtDriver whose snapshot() runs a configurable strategy."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._snapshot_registry = None
        # instance uuid -> name of the strategy that handed the snapshot
        # to LibvirtDriver.snapshot(); read by _create_snapshot_metadata.
        self._delegated_snapshots = {}

    @property
    def snapshot_registry(self):
        if self._snapshot_registry is None:
            self._snapshot_registry = strategies.Registry.load()
        return self._snapshot_registry

    def init_host(self, host):
        # Fail fast, before the service does anything, on a bad
        # [snapdriver] strategies.
        self._snapshot_registry = strategies.Registry.load()
        super().init_host(host)
        self._clean_snapshot_leftovers()
        # NOTE: the qemu-img runs the first live snapshot of the process
        # would make before its job (~20-40 ms), made now.
        runner.prepare_targets(CONF.libvirt.snapshots_directory)

    def _clean_snapshot_leftovers(self):
        """Clean what snapshots killed with nova-compute left behind.

        Per domain, with its snapshot lock taken without waiting (a domain
        whose lock is held has a snapshot running, of the ``snapdriver``
        command, and is skipped), in this order: the cold strategies clean
        the disk of a domain that does not run (internal snapshots of
        ours), also while a killed cold snapshot left it managed-saved;
        then such a guest is restored to the state it had
        (:mod:`snapdriver.journal`); then every strategy cleans what it
        left on a running domain (block copies and backups onto our work
        files; internal snapshots extracted after the guest's restore);
        then the domain's work directories of this host are removed. Work
        directories of other hosts, in a ``snapshots_directory`` on shared
        storage, are left alone.
        """
        snapdir = CONF.libvirt.snapshots_directory
        try:
            cleaners = strategies.Registry.load(
                strategies.available_names()).strategies
            guests = {guest.uuid.lower(): guest
                      for guest in self._host.list_guests(only_running=False)}
            conn = self._host.get_connection()
        except Exception:
            LOG.exception('Could not look for leftovers of interrupted '
                          'snapshots')
            return
        cold = [c for c in cleaners if c.guest_state != base.GUEST_LIVE]
        live = [c for c in cleaners if c.guest_state == base.GUEST_LIVE]
        uuids = (set(guests) | runner.workdir_uuids(snapdir) |
                 journal.uuids(snapdir))
        for uuid in sorted(uuids):
            try:
                with runner.snapshot_lock(uuid, blocking=False):
                    guest = guests.get(uuid)
                    if guest is not None:
                        self._clean_jobs(guest, cold, running=False)
                    journal.recover(conn, snapdir, uuid=uuid)
                    if guest is not None:
                        self._clean_jobs(guest, live + cold, running=True)
                    for path in runner.clean_stale_workdirs(
                            snapdir, uuid, defined_here=guest is not None):
                        LOG.warning('Removed work directory %s left by an '
                                    'interrupted snapshot', path)
            except lockutils.AcquireLockFailedException:
                LOG.info('A snapshot of domain %s runs: its work is not a '
                         'leftover', uuid)
            except Exception as e:
                LOG.warning('Could not clean the leftovers of domain '
                            '%(uuid)s: %(err)s', {'uuid': uuid, 'err': e})

    def _clean_jobs(self, guest, cleaners, running):
        """Run ``cleaners``' clean_leftovers if the domain runs (or not)."""
        if not cleaners:
            return
        try:
            if bool(guest.is_active()) != running:
                return
            request = snap_request.build(guest, image_format='raw')
        except Exception as e:
            LOG.debug('Skipped leftover check of domain %(name)s: '
                      '%(err)s', {'name': guest.name, 'err': e})
            return
        for strategy in cleaners:
            try:
                for item in strategy.clean_leftovers(request):
                    LOG.warning('Cleaned up %(item)s of domain %(name)s '
                                'left by an interrupted snapshot',
                                {'item': item, 'name': guest.name})
            except Exception as e:
                LOG.warning('Strategy %(strategy)s could not check '
                            'domain %(name)s for leftovers: %(err)s',
                            {'strategy': strategy.name,
                             'name': guest.name, 'err': e})

    def snapshot(self, context, instance, image_id, update_task_state):
        """Snapshot the instance's root disk with the configured strategy.

        Serialised per instance, also with the ``snapdriver`` command
        (:func:`runner.snapshot_lock`, an external lock): two snapshots of
        one instance never run two block jobs on one disk.
        """
        with runner.snapshot_lock(instance.uuid):
            return self._snapshot(context, instance, image_id,
                                  update_task_state)

    def _snapshot(self, context, instance, image_id, update_task_state):
        try:
            guest = self._host.get_guest(instance)
        except nova_exception.InstanceNotFound:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)

        snapshot = self._image_api.get(context, image_id)
        # NOTE: before the facts are gathered: a guest an interrupted
        # snapshot left managed-saved is running (or paused) again.
        journal.recover(self._host.get_connection(), uuid=instance.uuid,
                        instance=instance)
        request = snap_request.build(guest, instance=instance, driver=self)
        strategy, _skipped = self.policy_registry(instance).choose(request)
        if strategy.delegates_to_driver:
            self._delegated_snapshots[instance.uuid] = strategy.name
            try:
                return super().snapshot(context, instance, image_id,
                                        update_task_state)
            finally:
                self._delegated_snapshots.pop(instance.uuid, None)

        metadata = self._create_snapshot_metadata(
            instance.image_meta, instance, request.image_format,
            snapshot['name'])
        power = guest_state.NovaPowerControl(self, context, instance, guest)

        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        try:
            with runner.captured(request, strategy, power,
                                 image_id=image_id) as (out_path, run):
                LOG.info('Snapshot extracted, beginning image upload',
                         instance=instance)
                update_task_state(
                    task_state=task_states.IMAGE_UPLOADING,
                    expected_state=task_states.IMAGE_PENDING_UPLOAD)
                props = provenance.properties(run)
                LOG.info('Snapshot provenance: %s', props, instance=instance)
                provenance.stamp(metadata, props)
                with libvirt_utils.file_open(out_path, 'rb') as image_file:
                    # execute operation with disk concurrency semaphore
                    with compute_utils.disk_ops_semaphore:
                        self._image_api.update(context, image_id, metadata,
                                               image_file)
        except nova_exception.ImageNotFound:
            with excutils.save_and_reraise_exception():
                LOG.warning('Failed to snapshot image because it was '
                            'deleted', instance=instance)
        except Exception:
            with excutils.save_and_reraise_exception():
                LOG.exception('Failed to snapshot image', instance=instance)
        LOG.info('Snapshot image upload complete (%(summary)s)',
                 {'summary': run.summary()}, instance=instance)

    def policy_registry(self, instance):
        """The registry narrowed by the instance's flavor and image.

        :raises: :class:`snapdriver.exception.SnapshotStrategyNotAllowed`
        """
        registry = self.snapshot_registry
        return registry.narrowed(
            policy.for_instance(instance, registry.names()).names)

    def _create_snapshot_metadata(self, image_meta, instance, img_fmt,
                                  snp_name):
        metadata = super()._create_snapshot_metadata(
            image_meta, instance, img_fmt, snp_name)
        delegated = self._delegated_snapshots.get(instance.uuid)
        if delegated is not None:
            # NOTE: Nova's own snapshot() uploads with this metadata; stamp
            # what we know so no provenance inherited from the image the
            # server booted is left on the new snapshot.
            provenance.stamp(metadata, provenance.delegated(delegated))
        return metadata
