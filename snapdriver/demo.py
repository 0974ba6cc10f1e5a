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

"""``snapdriver driver-demo``: every strategy and guest state, a real Glance.

Nothing is set up by hand and nothing is faked but Nova's compute manager:

1. libvirt is prepared with ``tools/setup-host.sh`` when it does not
   answer (from a source checkout);
2. a real Glance API is started on 127.0.0.1
   (:class:`snapdriver.tests.functional.glance_fixture.GlanceAPI`);
3. a throwaway domain is defined on a disk with known content
   (:class:`snapdriver.tests.functional.fixtures.RealDomain`);
4. for each strategy and each guest state it applies to, an image record
   is created in Glance and ``LibvirtSnapshotDriver.snapshot()`` runs with
   Nova's own image API (``nova.image.glance.API``), so the upload goes
   over HTTP to Glance;
5. each image is downloaded back from Glance and compared with the
   reference content; the guest must be back in its state, persistent and
   without a managed-save image;
6. everything is removed, also on Ctrl-C, SIGTERM or failure (the
   command turns them into :class:`snapdriver.cmd.common.Interrupted`).

The exit code is 0 only when every snapshot that ran was verified.
"""

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import libvirt
from nova import context as nova_context
from nova.network import model as network_model
from nova import objects
from nova.virt import fake as fake_virt
from oslo_log import log as logging
from oslo_utils import units

import snapdriver
from snapdriver.cmd import common
from snapdriver import conf
from snapdriver import driver as snap_driver
from snapdriver import qemu_img
from snapdriver import request as snap_request
from snapdriver import strategies

LOG = logging.getLogger(__name__)
CONF = conf.CONF

STATES = ('running', 'paused', 'shutoff')

#: Glance runs without Keystone and ignores the token, but Nova's image
#: client (keystoneauth) refuses to send a request without one.
NO_KEYSTONE_TOKEN = 'snapdriver-demo-no-keystone'


class Row(object):
    """One snapshot of the demo: what ran and what was found."""

    def __init__(self, strategy, state):
        self.strategy = strategy
        self.state = state
        self.skipped = None
        self.error = None
        self.downtime = None
        self.transient = 0.0
        self.total = None
        self.size = None
        self.disk_format = None
        self.verified = False

    @property
    def failed(self):
        return self.skipped is None and not self.verified


class StateWatch(threading.Thread):
    """Polls a domain from its own connection while a snapshot runs.

    ``downtime`` is the time the domain was seen out of ``state`` (first
    to last such sample), ``transient`` the same for samples where the
    domain had no persistent definition.
    """

    def __init__(self, uri, uuid, state, interval=0.005):
        super().__init__(daemon=True)
        self.uri = uri
        self.uuid = uuid
        self.state = state
        self.interval = interval
        self._away = []
        self._transient = []
        self._stop_event = threading.Event()
        self.ready = threading.Event()

    def run(self):
        conn = libvirt.open(self.uri)
        try:
            dom = conn.lookupByUUIDString(self.uuid)
            self.ready.set()
            while not self._stop_event.is_set():
                now = time.monotonic()
                try:
                    state = real_fixtures().RealDomain._STATES.get(
                        dom.state()[0])
                    persistent = dom.isPersistent()
                except libvirt.libvirtError:
                    # NOTE: the stock driver undefines the domain for a
                    # live snapshot; for a moment it may not be found.
                    state, persistent = None, False
                if state != self.state:
                    self._away.append(now)
                if not persistent:
                    self._transient.append(now)
                time.sleep(self.interval)
        finally:
            self.ready.set()
            conn.close()

    def _span(self, times):
        if not times:
            return 0.0
        return times[-1] - times[0] + self.interval

    @property
    def downtime(self):
        return self._span(self._away)

    @property
    def transient(self):
        return self._span(self._transient)

    def stop(self):
        self._stop_event.set()
        self.join(10)


def real_fixtures():
    # Imported late: the fixtures need the "fixtures" library, which the
    # driver itself does not (tox -e driver-demo installs it).
    from snapdriver.tests.functional import fixtures
    return fixtures


def find_setup_script():
    """Return tools/setup-host.sh of a source checkout, or None."""
    candidates = [
        os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(snapdriver.__file__))), 'tools', 'setup-host.sh'),
        os.path.join(os.getcwd(), 'tools', 'setup-host.sh'),
    ]
    for path in candidates:
        root = os.path.dirname(os.path.dirname(path))
        if (os.path.isfile(path) and
                os.path.isfile(os.path.join(root, 'bindep.txt'))):
            return path
    return None


def ensure_host(out):
    """Make libvirt answer, with tools/setup-host.sh if needed."""
    reason = real_fixtures().libvirt_unavailable_reason()
    if reason is None:
        return
    script = find_setup_script()
    if script is None:
        raise common.CliError(
            '%s. tools/setup-host.sh is not available outside a snapdriver '
            'source checkout: install qemu-utils, qemu-system-x86 and '
            'libvirt-daemon-system and start libvirtd, or run the demo '
            'from a checkout with "tox -e demo"' % reason)
    out.write('libvirt is not ready (%s): running %s\n' % (reason, script))
    out.flush()
    result = subprocess.run(['bash', script], check=False)
    reason = real_fixtures().libvirt_unavailable_reason()
    if reason is not None:
        raise common.CliError(
            '%s failed (exit code %d) and libvirt is still not ready: %s'
            % (script, result.returncode, reason))


def set_state(domain, state):
    """Bring the demo domain to ``state`` (running, paused, shutoff)."""
    current = domain.state()
    if current == state:
        return
    dom = domain.dom
    if state == 'shutoff':
        dom.destroy()
    elif current == 'shutoff':
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED
                            if state == 'paused' else 0)
    elif state == 'paused':
        dom.suspend()
    else:
        dom.resume()
    if domain.state() != state:
        raise RuntimeError('domain %s is %s, not %s'
                           % (domain.name, domain.state(), state))


def privsep_helper_command():
    """The command that starts Nova's privsep daemon here, or None.

    nova-compute runs ``sudo privsep-helper`` (or rootwrap) as configured
    by the deployment; the stock strategy's live snapshot needs it to
    chown its overlay. Here the helper of this Python environment is used,
    through sudo unless we already are root.
    """
    helper = os.path.join(os.path.dirname(sys.executable), 'privsep-helper')
    if not os.access(helper, os.X_OK):
        helper = shutil.which('privsep-helper')
        if helper is None:
            return None
    cmd = [helper]
    if os.geteuid() != 0:
        if shutil.which('sudo') is None:
            return None
        cmd = ['sudo'] + cmd
    return ' '.join(shlex.quote(c) for c in cmd)


def make_instance(domain):
    """A nova Instance for the demo domain (no database is involved)."""
    objects.register_all()
    return objects.Instance(
        uuid=domain.uuid, kernel_id='', ramdisk_id='',
        project_id='snapdriver-demo', user_id='snapdriver-demo',
        os_type=None, image_ref='', numa_topology=None,
        system_metadata={},
        pci_devices=objects.PciDeviceList(objects=[]),
        pci_requests=objects.InstancePCIRequests(requests=[]),
        info_cache=objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([])))


def make_context():
    # NOTE: an admin context with a placeholder token: Glance runs its
    # unauthenticated pipeline and never looks at it.
    return nova_context.RequestContext(
        user_id='snapdriver-demo', project_id='snapdriver-demo',
        is_admin=True, auth_token=NO_KEYSTONE_TOKEN)


class Demo(object):
    """Everything one demo run needs, set up by :meth:`setUp`-like
    :meth:`start` inside an ``ExitStack`` so it is always torn down.
    """

    def __init__(self, out, names, states, fmt, size_mib):
        self.out = out
        self.names = names
        self.states = states
        self.fmt = fmt
        self.size_mib = size_mib
        self.rows = []

    def say(self, msg):
        self.out.write(msg + '\n')
        self.out.flush()

    def start(self, stack):
        from snapdriver.tests.functional import glance_fixture
        real = real_fixtures()
        reason = glance_fixture.glance_unavailable_reason()
        if reason is not None:
            raise common.CliError('%s; "tox -e demo" installs it' % reason)
        parent = (real.DEFAULT_IMAGES_PARENT
                  if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                  else tempfile.gettempdir())
        # 0o711: QEMU traverses it to reach a live strategy's overlay.
        self.workdir = common.private_dir(parent)
        stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        snapshots = os.path.join(self.workdir, 'snapshots')
        os.mkdir(snapshots, 0o711)
        self.downloads = os.path.join(self.workdir, 'downloads')
        os.mkdir(self.downloads, 0o700)

        self.say('Work directory %s' % self.workdir)
        self.glance = stack.enter_context(glance_fixture.GlanceAPI(
            parent_dir=self.workdir))
        self.say('Glance API (real, gunicorn) on %s' % self.glance.endpoint)

        size = self.size_mib * units.Mi
        images = stack.enter_context(real.DiskImages(
            virtual_size=size, data_size=max(32 * units.Ki, size // 4),
            parent_dir=self.workdir))
        self.domain = stack.enter_context(real.RealDomain(
            images=images, start_state='running', name=None))
        self.say('Throwaway domain %s: %d MiB qcow2 disk on a raw base, '
                 '%d MiB of known data' % (self.domain.name, self.size_mib,
                                           images.data_size // units.Mi))

        uri = self.domain.uri
        overrides = [
            ('api_servers', [self.glance.endpoint], 'glance'),
            ('connection_uri', uri, 'libvirt'),
            ('virt_type', 'kvm' if real.kvm_usable() else 'qemu',
             'libvirt'),
            ('snapshots_directory', snapshots, 'libvirt'),
            ('snapshot_image_format', self.fmt, 'libvirt'),
        ]
        if not CONF.oslo_concurrency.lock_path:
            # The driver's snapshot lock; the throwaway domain is ours.
            overrides.append(('lock_path', os.path.join(
                os.path.dirname(snapshots), 'locks'), 'oslo_concurrency'))
        helper = privsep_helper_command()
        if helper is not None and not CONF.nova_sys_admin.helper_command:
            overrides.append(('helper_command', helper, 'nova_sys_admin'))
        for name, value, group in overrides:
            CONF.set_override(name, value, group=group)
            stack.callback(CONF.clear_override, name, group=group)
        stack.callback(CONF.clear_override, 'strategies', group='snapdriver')

        self.driver = snap_driver.LibvirtSnapshotDriver(
            fake_virt.FakeVirtAPI(), False)
        # Nova's own image API; [glance] api_servers points it at ours.
        self.image_api = self.driver._image_api
        self.context = make_context()
        self.instance = make_instance(self.domain)

    def run(self):
        total = len(self.states) * len(self.names)
        n = 0
        for state in self.states:
            try:
                set_state(self.domain, state)
            except Exception as e:
                for name in self.names:
                    row = Row(name, state)
                    row.error = ('could not make the guest %s: %s'
                                 % (state, e))
                    self.rows.append(row)
                    n += 1
                    self.say('[%d/%d] %-20s %-8s %s' % (
                        n, total, name, state, self._verdict(row)))
                continue
            for name in self.names:
                n += 1
                row = Row(name, state)
                self.rows.append(row)
                try:
                    self.run_one(row)
                except (common.Interrupted, KeyboardInterrupt):
                    row.error = 'interrupted'
                    raise
                except Exception as e:
                    if common.interrupted():
                        row.error = 'interrupted'
                        raise common.Interrupted(common.interrupted()) from e
                    LOG.debug('Demo snapshot %(name)s of a %(state)s guest '
                              'failed', {'name': name, 'state': state},
                              exc_info=True)
                    row.error = '%s: %s' % (type(e).__name__, e)
                if row.failed:
                    self._recover(state)
                self.say('[%d/%d] %-20s %-8s %s' % (n, total, name, state,
                                                    self._verdict(row)))

    def _recover(self, state):
        try:
            if not self.domain.is_persistent():
                # NOTE: the stock driver undefines the domain for its live
                # snapshot and redefines it in a finally: block, after a
                # privileged chown; when that chown fails the domain stays
                # transient. Redefine it so the demo can go on.
                LOG.warning('The demo domain was left transient; '
                            'redefining it')
                self.domain.conn.defineXML(self.domain.dom.XMLDesc(
                    libvirt.VIR_DOMAIN_XML_INACTIVE |
                    libvirt.VIR_DOMAIN_XML_SECURE))
            set_state(self.domain, state)
        except Exception as e:
            LOG.warning('Could not bring the demo domain back to %(state)s: '
                        '%(err)s', {'state': state, 'err': e})

    def run_one(self, row):
        CONF.set_override('strategies', [row.strategy], group='snapdriver')
        # The driver loads its registry once (at init_host in
        # nova-compute); here each row configures another strategy.
        self.driver._snapshot_registry = None
        registry = self.driver.snapshot_registry
        guest = self.driver._host.get_guest(self.instance)
        request = snap_request.build(guest, instance=self.instance,
                                     driver=self.driver)
        _strategy, skipped = registry.plan(request)
        if skipped:
            row.skipped = skipped[0][1]
            return

        image = self.image_api.create(self.context, {
            'name': 'snapdriver-demo-%s-%s' % (row.strategy, row.state)})
        image_id = image['id']
        watch = StateWatch(self.domain.uri, self.domain.uuid, row.state)
        watch.start()
        watch.ready.wait(10)
        t0 = time.monotonic()
        try:
            self.driver.snapshot(self.context, self.instance, image_id,
                                 lambda task_state, expected_state=None:
                                 None)
        finally:
            row.total = time.monotonic() - t0
            watch.stop()
        if row.state != 'shutoff':
            row.downtime = watch.downtime
        row.transient = watch.transient

        meta = self.image_api.get(self.context, image_id)
        row.size = meta.get('size')
        row.disk_format = meta.get('disk_format')
        path = os.path.join(self.downloads, image_id)
        try:
            self.image_api.download(self.context, image_id, dest_path=path)
            row.error = self._verify(row, path)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        row.verified = row.error is None
        self.image_api.delete(self.context, image_id)

    def _verify(self, row, path):
        real = real_fixtures()
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return 'nothing was downloaded from Glance'
        if row.disk_format != self.fmt:
            return 'Glance says %s, not %s' % (row.disk_format, self.fmt)
        if qemu_img.info(path, row.disk_format).backing_file:
            return 'the image has a backing file'
        if not real.images_equal(path, row.disk_format,
                                 self.domain.images.reference_path, 'raw'):
            return 'the image differs from the disk content'
        if self.domain.state() != row.state:
            return 'the guest is %s, not %s' % (self.domain.state(),
                                                row.state)
        if not self.domain.is_persistent():
            return 'the domain is no longer persistent'
        if self.domain.has_managed_save():
            return 'a managed-save image was left'
        return None

    @staticmethod
    def _verdict(row):
        if row.skipped is not None:
            return 'does not apply: %s' % row.skipped
        if row.verified:
            return 'verified'
        return 'FAILED: %s' % row.error

    def table(self):
        header = ('STRATEGY', 'STATE', 'DOWNTIME', 'TOTAL', 'SIZE',
                  'VERIFIED')
        lines = []
        for row in self.rows:
            if row.skipped is not None:
                lines.append((row.strategy, row.state, '-', '-', '-',
                              'n/a: %s' % row.skipped))
                continue
            downtime = ('-' if row.downtime is None
                        else '%.3f s' % row.downtime)
            if row.transient:
                downtime += ' (transient %.3f s)' % row.transient
            lines.append((
                row.strategy, row.state, downtime,
                '-' if row.total is None else '%.2f s' % row.total,
                '-' if row.size is None else common.human_size(row.size),
                'yes' if row.verified else 'NO: %s' % row.error))
        widths = [max(len(r[i]) for r in [header] + lines)
                  for i in range(len(header) - 1)]
        out = []
        for r in [header] + lines:
            out.append('  '.join(c.ljust(w) for c, w in zip(r, widths)) +
                       '  ' + r[-1])
        return '\n'.join(out)


def run(args, out):
    """The ``snapdriver demo`` command; returns the exit code."""
    available = strategies.available_names()
    names = args.strategies or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise common.CliError(
            'unknown strategies %s; installed: %s'
            % (', '.join(unknown), ', '.join(available)), common.EXIT_USAGE)
    if args.size_mib < 16:
        raise common.CliError('--size-mib must be at least 16',
                              common.EXIT_USAGE)
    states = [s for s in STATES if s in (args.states or STATES)]
    try:
        real_fixtures()
    except ImportError as e:
        raise common.CliError(
            'the demo needs the test fixtures of snapdriver (%s): run it '
            'with "tox -e driver-demo", or pip install fixtures '
            '"glance==33.*" gunicorn' % e)
    ensure_host(out)
    demo = Demo(out, names, states, args.format, args.size_mib)
    interrupted = False
    with contextlib.ExitStack() as stack:
        try:
            demo.start(stack)
            demo.say('%d strategies x %d guest states, %s images\n'
                     % (len(names), len(states), args.format))
            demo.run()
        except BaseException as e:
            if not (common.interrupted() or isinstance(e, KeyboardInterrupt)):
                raise
            interrupted = True
            demo.say('\ninterrupted: cleaning up')
    out.write('\n%s\n' % demo.table())
    ran = [r for r in demo.rows if r.skipped is None]
    failed = [r for r in ran if r.failed]
    out.write('\n%d snapshots through Glance, %d verified, %d failed; %d '
              'combinations do not apply. Glance, the domain and its '
              'disks were removed.\n'
              % (len(ran), len(ran) - len(failed), len(failed),
                 len(demo.rows) - len(ran)))
    if interrupted:
        return 130
    return common.EXIT_FAILED if failed or not ran else common.EXIT_OK
