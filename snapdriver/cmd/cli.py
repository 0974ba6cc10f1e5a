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

"""The ``snapdriver`` command: strategies, plan, snapshot and demo.

It reads ``nova.conf`` through oslo.config (``--config-file``), so the
``[snapdriver]`` and ``[libvirt]`` options of a compute host apply, and it
takes the decisions and the snapshots through the same code as the driver:
:func:`snapdriver.request.build`, :class:`snapdriver.strategies.Registry`
and :func:`snapdriver.runner.captured`.
"""

import argparse
import contextlib
import os
import shutil
import stat
import sys
import tempfile

import libvirt
from nova.compute import power_state
from nova import exception as nova_exception
from nova.virt.libvirt import guest as libvirt_guest
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units
import stevedore

from snapdriver.cmd import common
from snapdriver.cmd import policy as cli_policy
from snapdriver import conf
from snapdriver import guest_state
from snapdriver import journal
from snapdriver import provenance
from snapdriver import request as snap_request
from snapdriver import runner
from snapdriver import strategies
from snapdriver.strategies import base

LOG = logging.getLogger(__name__)
CONF = conf.CONF

#: Parent of the private work directory when ``[libvirt]
#: snapshots_directory`` does not exist (it is under Nova's instances path,
#: which a host without nova-compute lacks). libvirt's image pool is
#: traversable by the QEMU user, as live strategies need.
DEFAULT_WORK_PARENT = '/var/lib/libvirt/images'

# NOTE: the exit codes, errors and interrupt handling are shared with
# snapdriver.demo and snapdriver.box (snapdriver.cmd.common); the names stay
# here too, for the callers of this module.
EXIT_OK = common.EXIT_OK
EXIT_FAILED = common.EXIT_FAILED
EXIT_USAGE = common.EXIT_USAGE
CliError = common.CliError
Interrupted = common.Interrupted
interrupted = common.interrupted
interrupts_as_exceptions = common.interrupts_as_exceptions


# Configuration and libvirt


#: Loggers held at ERROR by ``demo``: its table says what happened, and
#: ``--debug`` shows everything.
QUIET_LOGGERS = ('nova', 'snapdriver', 'glanceclient', 'keystoneauth',
                 'stevedore', 'oslo_utils', 'oslo.privsep', 'oslo_privsep')


def setup_logging(debug=False, quiet=False):
    """Send oslo.log output to stderr, INFO (or DEBUG) and above.

    :param quiet: hold :data:`QUIET_LOGGERS` at ERROR (unless ``debug``).
    """
    # NOTE: runner.check_source accepts a qcow2 disk's backing file (the
    # domain XML names it), but the format inspector has already logged
    # the failed backing_file safety check as a warning by then.
    levels = logging.get_default_log_levels() + [
        'oslo_utils.imageutils.format_inspector=ERROR']
    if debug:
        CONF.set_override('debug', True)
    elif quiet:
        levels += ['%s=ERROR' % name for name in QUIET_LOGGERS]
    CONF.set_override('default_log_levels', levels)
    logging.setup(CONF, 'snapdriver')


def load_config(config_files, config_dirs):
    """Parse nova.conf the way nova-compute does.

    :param config_files: paths given with ``--config-file``; when empty,
        oslo.config looks for ``nova.conf`` in its usual places
        (``/etc/nova/nova.conf``...).
    """
    # NOTE: clear() forgets an earlier parse (main() run twice in one
    # process, as in the tests), else registering the CLI options of
    # oslo.log raises ArgsAlreadyParsedError.
    CONF.clear()
    logging.register_options(CONF)
    args = []
    for path in config_files or []:
        if not os.path.isfile(path):
            raise CliError('config file %s does not exist' % path,
                           EXIT_USAGE)
        args += ['--config-file', path]
    for path in config_dirs or []:
        args += ['--config-dir', path]
    CONF(args, project='nova', prog='snapdriver')


def libvirt_uri():
    """The URI nova-compute would connect to (LibvirtDriver._uri())."""
    if CONF.libvirt.connection_uri:
        return CONF.libvirt.connection_uri
    if CONF.libvirt.virt_type == 'lxc':
        return 'lxc:///'
    if CONF.libvirt.virt_type == 'parallels':
        return 'parallels:///system'
    return 'qemu:///system'


def _ignore_libvirt_error(_ctx, _err):
    # NOTE: libvirt prints every error to stderr by default; ours are
    # reported once, as exceptions.
    pass


def open_guest(ref):
    """Find a domain by name or UUID on ``[libvirt] connection_uri``.

    :returns: ``(virConnect, nova.virt.libvirt.guest.Guest)``.
    :raises: :class:`CliError` when libvirt cannot be reached or no
        domain has that name or UUID.
    """
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    uri = libvirt_uri()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise CliError('cannot connect to libvirt at %s: %s (is libvirtd '
                       'running? tools/setup-host.sh starts it)' % (uri, e))
    for dom in conn.listAllDomains(0):
        if ref in (dom.name(), dom.UUIDString()) or (
                ref.lower() == dom.UUIDString()):
            return conn, libvirt_guest.Guest(dom)
    conn.close()
    raise CliError('no domain named or with UUID "%s" on %s (virsh -c %s '
                   'list --all shows the domains)' % (ref, uri, uri))


def load_registry(names=None):
    try:
        return strategies.Registry.load(names)
    except (nova_exception.Invalid, nova_exception.NovaException) as e:
        raise CliError(str(e), EXIT_USAGE)


# snapdriver strategies


def cmd_strategies(args, out):
    """List every installed strategy, in the configured order first."""
    failures = []

    def _failed(manager, entrypoint, exc):
        failures.append((entrypoint.name, exc))

    manager = stevedore.ExtensionManager(
        strategies.NAMESPACE, on_load_failure_callback=_failed)
    configured = [n.strip() for n in CONF.snapdriver.strategies or []]
    rows = []
    for ext in manager:
        order = (str(configured.index(ext.name) + 1)
                 if ext.name in configured else '-')
        mode = getattr(ext.plugin, 'guest_state', '?')
        if getattr(ext.plugin, 'delegates_to_driver', False):
            mode = 'nova'
        rows.append((ext.name, order, mode,
                     getattr(ext.plugin, 'description', '') or
                     '(no description)', ext.entry_point.value))
    rows.sort(key=lambda r: (r[1] == '-', r[1], r[0]))
    for name, exc in failures:
        rows.append((name, '-', '?', 'cannot be loaded: %s' % exc, ''))
    width = max([len(r[0]) for r in rows] + [8])
    out.write('%-*s  %-5s  %-5s  %s\n' % (width, 'STRATEGY', 'ORDER',
                                          'GUEST', 'DESCRIPTION'))
    for name, order, mode, description, _target in rows:
        out.write('%-*s  %-5s  %-5s  %s\n' % (width, name, order, mode,
                                              description))
    missing = [n for n in configured if n not in manager.names()]
    out.write('\n[snapdriver] strategies = %s\n' % ', '.join(configured))
    if missing:
        out.write('Not installed: %s\n' % ', '.join(missing))
    return EXIT_FAILED if failures or missing else EXIT_OK


# snapdriver plan


def _describe_request(request, out):
    disk = '%s (%s' % (request.disk_path, request.source_format)
    if request.backing_file:
        disk += ' on %s %s' % (request.backing_format or '?',
                               request.backing_file)
    disk += ')'
    out.write('domain:   %s (%s)\n' % (request.name, request.uuid))
    out.write('state:    %s\n' % request.power_state_name)
    out.write('disk:     %s %s\n' % (request.disk_dev, disk))
    out.write('output:   %s%s\n' % (request.image_format,
                                    ', compressed' if request.compress
                                    else ''))


def cmd_plan(args, out):
    conn, guest = open_guest(args.domain)
    try:
        registry = load_registry(
            [args.strategy] if args.strategy else None)
        request = snap_request.build(guest, image_format=args.format)
        registry, policy, flavor_from = _apply_policy(registry, guest, args)
        chosen, skipped = registry.plan(request)
    finally:
        conn.close()
    _describe_request(request, out)
    cli_policy.describe(policy, flavor_from, out)
    out.write('strategies, in order:\n')
    width = max(len(n) for n in registry.names())
    reasons = dict(skipped)
    for i, name in enumerate(registry.names(), 1):
        if name in reasons:
            verdict = 'skipped: %s' % reasons[name]
        elif chosen is not None and name == chosen.name:
            verdict = 'CHOSEN (%s)' % _mode(chosen)
        else:
            verdict = 'not considered (an earlier strategy applies)'
        out.write('  %d. %-*s  %s\n' % (i, width, name, verdict))
    if chosen is None:
        out.write('no strategy applies: the snapshot would fail before '
                  'the guest is touched\n')
        return EXIT_FAILED
    cli_policy.write_provenance(provenance.expected(request, chosen), out,
                                'the snapshot would say')
    return EXIT_OK


def _apply_policy(registry, guest, args):
    """The registry narrowed by the flavor's and the image's lists."""
    try:
        return cli_policy.resolve(registry, guest, args)
    except nova_exception.Invalid as e:
        raise CliError(str(e))


def _mode(strategy):
    if strategy.delegates_to_driver:
        return "Nova's own snapshot"
    if strategy.guest_state == base.GUEST_LIVE:
        return 'live, no downtime'
    return 'cold, the guest is managed-saved and restored'


# snapdriver snapshot


def _check_output(path, force):
    """Refuse an unusable OUTPUT before anything touches the guest."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        raise CliError('output %s is a directory; give a file name' % path,
                       EXIT_USAGE)
    if os.path.lexists(path) and not force:
        raise CliError('output %s already exists; remove it or pass '
                       '--force to replace it' % path, EXIT_USAGE)
    if not os.path.isdir(parent):
        raise CliError('the directory of output %s does not exist'
                       % path, EXIT_USAGE)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError('cannot write output %s: the directory %s is not '
                       'writable by this user' % (path, parent), EXIT_USAGE)
    return path


def choose_work_dir(requested):
    """Return ``(snapshots directory, is_ours)``.

    ``--work-dir`` wins; else ``[libvirt] snapshots_directory`` when it
    exists and is writable; else a private directory under
    :data:`DEFAULT_WORK_PARENT` (or the system temporary directory),
    removed afterwards.
    """
    if requested:
        path = os.path.abspath(requested)
        if not os.path.isdir(path):
            raise CliError('work directory %s does not exist' % path,
                           EXIT_USAGE)
        if not os.access(path, os.W_OK | os.X_OK):
            raise CliError('work directory %s is not writable' % path,
                           EXIT_USAGE)
        return path, False
    configured = CONF.libvirt.snapshots_directory
    if os.path.isdir(configured) and os.access(configured,
                                               os.W_OK | os.X_OK):
        return configured, False
    for parent in (DEFAULT_WORK_PARENT, tempfile.gettempdir()):
        if os.access(parent, os.W_OK | os.X_OK):
            return common.private_dir(parent), True
    raise CliError('no writable work directory: pass --work-dir',
                   EXIT_USAGE)


def untraversable_parent(path):
    """Return the first parent of ``path`` others cannot traverse, or
    None: QEMU, running as its own user, must reach a live strategy's
    overlay.
    """
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


class Progress(object):
    """The progress callback of :func:`runner.captured`.

    A tqdm bar per phase when stderr is a terminal (and tqdm installed),
    else a log line every 25 %.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bars = {}
        self.logged = {}
        self.tqdm = None
        if self.stream.isatty():
            try:
                import tqdm
                self.tqdm = tqdm.tqdm
            except ImportError:
                pass

    def __call__(self, phase, current, end):
        if self.tqdm is not None:
            bar = self.bars.get(phase)
            if bar is None:
                bar = self.bars[phase] = self.tqdm(
                    total=end, desc=phase, unit='B', unit_scale=True,
                    unit_divisor=1024, file=self.stream, leave=True)
            if end and bar.total != end:
                bar.total = end
            bar.update(max(0, current - bar.n))
            return
        pct = int(100 * current / end) if end else 0
        step = pct // 25 * 25
        if self.logged.get(phase, -1) < step:
            self.logged[phase] = step
            LOG.info('%(phase)s: %(pct)d%% (%(cur)d of %(end)d MiB)',
                     {'phase': phase, 'pct': pct, 'cur': current // units.Mi,
                      'end': end // units.Mi})

    def close(self):
        for bar in self.bars.values():
            bar.close()
        self.bars = {}


def _current_umask():
    # NOTE: os.umask() is the only way to read it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _place_output(src, dest):
    """Move the image out of the work dir before the runner removes it.

    Written under a temporary name in the destination directory, then
    renamed, so OUTPUT never holds half an image. Its mode is what the
    user's umask gives a new file (0644 under the usual 022, 0600 under
    077): the image holds the guest's data.
    """
    mode = 0o666 & ~_current_umask()
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(dest),
                               dir=os.path.dirname(dest))
    os.close(fd)
    try:
        try:
            os.rename(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _ensure_restored(request, guest):
    """Restart a guest a failed or interrupted cold snapshot left saved.

    guest_state.held() restores the guest when the capture fails, but an
    interrupt that lands just after the managed save returns, before
    held() reaches its ``try``, escapes it.
    """
    if not request.is_active:
        return
    try:
        dom = guest._domain
        if dom.isActive() or not dom.hasManagedSaveImage(0):
            return
        paused = request.power_state == power_state.PAUSED
        LOG.warning('The snapshot of %(name)s was interrupted with the '
                    'guest managed-saved; restoring it to %(state)s',
                    {'name': request.name,
                     'state': request.power_state_name})
        guest_state.LibvirtPowerControl(guest).restore(paused)
    except Exception:
        LOG.exception('Could not restore guest %(name)s; start it with '
                      '"virsh start %(name)s"', {'name': request.name})


def cmd_snapshot(args, out):
    output = _check_output(args.output, args.force)
    registry = load_registry([args.strategy] if args.strategy else None)
    workdir, ours = choose_work_dir(args.work_dir)
    try:
        CONF.set_override('snapshots_directory', workdir, group='libvirt')
        conn, guest = open_guest(args.domain)
        try:
            with _snapshot_lock(guest):
                return _snapshot(args, out, registry, guest, output,
                                 workdir)
        finally:
            conn.close()
    finally:
        CONF.clear_override('snapshots_directory', group='libvirt')
        if ours:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _snapshot_lock(guest):
    """Hold the domain's snapshot lock, the one nova-compute takes.

    Waits, saying so, while another snapshot of the domain runs (a Nova
    snapshot, or another run of this command): its job and work directory
    are not leftovers.
    """
    held = contextlib.ExitStack()
    try:
        try:
            held.enter_context(runner.snapshot_lock(guest.uuid,
                                                    blocking=False))
        except lockutils.AcquireLockFailedException:
            sys.stderr.write('snapdriver: a snapshot of %s is running '
                             '(nova-compute?); waiting for it to end\n'
                             % guest.name)
            held.enter_context(runner.snapshot_lock(guest.uuid))
    except nova_exception.NovaException as e:
        raise CliError(str(e))
    with held:
        yield


def _snapshot(args, out, registry, guest, output, workdir):
    # NOTE: as nova-compute does, with the lock held and before the facts
    # are read: a guest a killed snapshot left managed-saved comes back.
    for done in journal.recover(guest._domain.connect(), uuid=guest.uuid):
        out.write('snapdriver: %s\n' % done)
    request = snap_request.build(guest, image_format=args.format)
    registry, _policy, _from = _apply_policy(registry, guest, args)
    try:
        strategy, _skipped = registry.choose(request)
    except nova_exception.NovaException as e:
        raise CliError(str(e))
    if strategy.delegates_to_driver:
        raise CliError('strategy %s runs only inside nova-compute; choose '
                       'another with --strategy' % strategy.name, EXIT_USAGE)
    if strategy.guest_state == base.GUEST_LIVE and request.is_active:
        blocked = untraversable_parent(workdir)
        if blocked is not None:
            raise CliError('QEMU cannot reach the work directory %s: %s is '
                           'not traversable by other users (chmod o+x, or '
                           'pass --work-dir)' % (workdir, blocked),
                           EXIT_USAGE)
    progress = Progress()
    power = guest_state.LibvirtPowerControl(guest)
    try:
        with runner.captured(request, strategy, power,
                             progress=progress) as (out_path, run):
            progress.close()
            if os.path.lexists(output) and not args.force:
                raise CliError('output %s appeared during the snapshot; '
                               'not replacing it' % output)
            _place_output(out_path, output)
    except nova_exception.NovaException as e:
        _ensure_restored(request, guest)
        raise CliError(str(e))
    except BaseException:
        with excutils.save_and_reraise_exception():
            _ensure_restored(request, guest)
    finally:
        progress.close()
    summary = run.summary()
    out.write('snapshot of %s (%s guest) written to %s\n'
              % (request.name, request.power_state_name, output))
    out.write('  strategy:        %s\n' % summary['strategy'])
    out.write('  format:          %s\n' % request.image_format)
    out.write('  total time:      %.2f s\n' % summary['total_seconds'])
    out.write('  guest downtime:  %.3f s\n' % summary['downtime_seconds'])
    out.write('  output size:     %s (%d bytes)\n'
              % (common.human_size(summary['output_bytes']),
                 summary['output_bytes']))
    out.write('  phases:          %s\n' % ', '.join(
        '%s %.2f s' % item for item in summary['phases'].items()))
    cli_policy.write_provenance(provenance.properties(run), out)
    return EXIT_OK


# snapdriver demo


def cmd_driver_demo(args, out):
    from snapdriver import demo
    return demo.run(args, out)


def cmd_demo(args, out):
    from snapdriver.box import demo
    return demo.run(args, out)


def cmd_bench_box(args, out):
    from snapdriver.box import bench
    return bench.run(args, out)


def _int_list(text):
    return [int(v) for v in text.split(',') if v]


def _float_list(text):
    return [float(v) for v in text.split(',') if v]


def cmd_box(args, out):
    from snapdriver.box import cmd as box_cmd
    return box_cmd.run(args, out)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='snapdriver',
        description='Plan and take libvirt snapshots with the snapdriver '
                    'strategies, as nova-compute would.')
    parser.add_argument('--config-file', action='append', default=[],
                        metavar='PATH',
                        help='nova.conf to read ([snapdriver], [libvirt]); '
                             'repeatable. Default: oslo.config\'s search '
                             '(/etc/nova/nova.conf...).')
    parser.add_argument('--config-dir', action='append', default=[],
                        metavar='DIR', help='nova.conf.d style directory.')
    parser.add_argument('--debug', action='store_true',
                        help='log at DEBUG level.')
    parser.set_defaults(quiet_logs=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser('strategies', help='list the installed strategies.')
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser(
        'plan', help='show which strategy would snapshot a domain, and why '
                     'the earlier ones would not.')
    p.add_argument('domain', metavar='DOMAIN', help='domain name or UUID.')
    p.add_argument('--strategy', metavar='NAME',
                   help='consider only this strategy.')
    cli_policy.add_arguments(p)
    p.add_argument('--format', choices=('raw', 'qcow2'),
                   help='output format (default: [libvirt] '
                        'snapshot_image_format, else the disk\'s).')
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        'snapshot', help='snapshot a libvirt domain to a file, outside '
                         'Nova.')
    p.add_argument('domain', metavar='DOMAIN', help='domain name or UUID.')
    p.add_argument('output', metavar='OUTPUT', help='image file to write.')
    p.add_argument('--strategy', metavar='NAME',
                   help='use this strategy (default: the first of '
                        '[snapdriver] strategies that applies).')
    p.add_argument('--format', choices=('raw', 'qcow2'),
                   help='output format (default: [libvirt] '
                        'snapshot_image_format, else the disk\'s).')
    p.add_argument('--force', action='store_true',
                   help='replace OUTPUT if it exists.')
    cli_policy.add_arguments(p)
    p.add_argument('--work-dir', metavar='DIR',
                   help='directory for temporary files (default: [libvirt] '
                        'snapshots_directory if it exists, else a private '
                        'directory under %s).' % DEFAULT_WORK_PARENT)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser(
        'demo', help='the main job: bring the box up, boot a writing guest '
                     'through Nova, "openstack server image create" with '
                     'every strategy that applies, boot a clone of each '
                     'snapshot and read the data back; print a table.')
    p.add_argument('--strategy', action='append', dest='strategies',
                   metavar='NAME',
                   help='run only this strategy (repeatable; default: the '
                        'default order, then each installed strategy).')
    p.add_argument('--box-dir', default=_box_default_dir(), metavar='DIR',
                   help='where the box lives while the demo runs (default: '
                        '%(default)s).')
    p.add_argument('--keep', action='store_true',
                   help='leave the box running at the end.')
    p.set_defaults(func=cmd_demo, quiet_logs=True)

    p = sub.add_parser(
        'bench-box', help='time "createImage" on guests Nova booted in the '
                          'box: stock Nova and each strategy, same disk '
                          '(writes box-results.md and .json).')
    p.add_argument('--sizes', type=_int_list, default=[2], metavar='GIB,..',
                   help='root disk sizes in GiB (default: 2).')
    p.add_argument('--fill', type=_float_list, default=[0.25, 0.75],
                   metavar='F,..',
                   help='fraction of the disk holding data, half in the '
                        'image (_base), half copied by the guest (the '
                        'overlay) (default: 0.25,0.75).')
    p.add_argument('--case', action='append', dest='cases', metavar='NAME',
                   help='run only this case (repeatable): stock-live, '
                        'stock-cold or a strategy name.')
    p.add_argument('--repeat', type=int, default=3,
                   help='snapshots per case and disk (default: 3).')
    p.add_argument('--box-dir', default=_box_default_dir() + '-bench',
                   metavar='DIR', help='where the box lives while the '
                                       'benchmark runs (default: '
                                       '%(default)s).')
    p.add_argument('--output-dir', default='bench-results', metavar='DIR',
                   help='where the results go (default: %(default)s).')
    p.add_argument('--keep', action='store_true',
                   help='leave the box running at the end.')
    p.set_defaults(func=cmd_bench_box, quiet_logs=True)

    p = sub.add_parser(
        'box', help='a compute host in a box on 127.0.0.1: start, status, '
                    'stop.')
    p.add_argument('action', choices=('start', 'status', 'stop', 'run'),
                   help='start: start it and return; run: start it and '
                        'stop it on Ctrl-C; status; stop: remove '
                        'everything it made.')
    p.add_argument('--box-dir', default=_box_default_dir(), metavar='DIR',
                   help='the box directory (default: %(default)s).')
    p.add_argument('--strategy', action='append', dest='strategies',
                   metavar='NAME',
                   help='[snapdriver] strategies of nova-compute '
                        '(repeatable; default: the driver\'s order).')
    p.set_defaults(func=cmd_box, quiet_logs=True)

    p = sub.add_parser(
        'driver-demo', help='snapshot a throwaway domain with every '
                            'strategy in every guest state straight '
                            'through the driver and a real Glance, verify '
                            'each image and print a table.')
    p.add_argument('--strategy', action='append', dest='strategies',
                   metavar='NAME',
                   help='run only this strategy (repeatable; default: all '
                        'installed).')
    p.add_argument('--state', action='append', dest='states',
                   choices=('running', 'paused', 'shutoff'),
                   help='run only this guest state (repeatable; default: '
                        'all three).')
    p.add_argument('--format', choices=('raw', 'qcow2'), default='qcow2',
                   help='image format (default: qcow2).')
    p.add_argument('--size-mib', type=int, default=256, metavar='MIB',
                   help='virtual size of the demo disk (default: 256).')
    p.set_defaults(func=cmd_driver_demo, quiet_logs=True)
    return parser


def _box_default_dir():
    return os.environ.get('SNAPDRIVER_BOX_DIR', '/var/tmp/snapdriver-box')


def main(argv=None, out=None):
    """Run the command; return its exit code.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        by default.
    :param out: where results go; ``sys.stdout`` by default. Logs and
        errors go to stderr.
    """
    out = out or sys.stdout
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_config(args.config_file, args.config_dir)
        setup_logging(args.debug, args.quiet_logs)
        with interrupts_as_exceptions():
            return args.func(args, out)
    except CliError as e:
        sys.stderr.write('snapdriver %s: error: %s\n' % (args.command, e))
        return e.code
    except BaseException as e:
        if not (interrupted() or isinstance(e, KeyboardInterrupt)):
            raise
        sys.stderr.write('snapdriver %s: interrupted by %s; cleaned up\n'
                         % (args.command, interrupted() or 'SIGINT'))
        return 130


if __name__ == '__main__':
    # NOTE: "python -m snapdriver.cmd.cli" runs a second copy of this
    # module as __main__; use the package's, so that demo.py and main()
    # share one Interrupted class.
    from snapdriver.cmd import cli as _cli
    sys.exit(_cli.main())
