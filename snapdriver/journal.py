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

"""A durable note of the guest state a snapshot must give back.

A cold strategy managed-saves a running or paused guest and restores it
after the copy. If the process dies in between (nova-compute SIGKILLed by
a deploy or the OOM killer), the guest stays shut off with its managed
save; Nova's power-state sync then sees a shut-off domain under an ACTIVE
server and stops it, and the next start boots it afresh: the guest's
memory is lost. The stock driver behaves the same.

So before the managed save, :func:`recorded` writes (and fsyncs) a small
JSON entry naming the domain and the state it had; the entry is removed
once the guest is restored. :func:`recover` -- run by the driver's
``init_host`` and before each snapshot of an instance -- restores every
guest whose entry outlived the process that wrote it, and never touches a
domain without an entry of ours (an operator's own managed save).

Entries live in ``[oslo_concurrency] lock_path`` (which the driver and the
``snapdriver`` command share, on local storage), in a directory named
after this host (``[DEFAULT] host``), so a restart never acts on another
host's guests even if that path were shared.
"""

import contextlib
import json
import os
import socket
import time

import libvirt
from oslo_log import log as logging
from oslo_utils import fileutils

from snapdriver import conf

LOG = logging.getLogger(__name__)
CONF = conf.CONF

#: The only action recorded so far: a managed save to undo.
MANAGED_SAVE = 'managed-save'

#: Seconds :func:`recover` waits for a managed save that libvirtd still
#: runs: a killed process's save goes on without it, and a domain that is
#: active only until that save ends must then be restored.
SAVE_WAIT = 600
#: Seconds between two looks at that save job.
SAVE_POLL = 0.1


def directory(snapshots_directory=None):
    """The journal directory of this host.

    In ``[oslo_concurrency] lock_path`` (local storage, the same for
    nova-compute and the ``snapdriver`` command, which needs it for its
    locks anyway), else in the snapshots directory.
    """
    host = CONF.host or socket.gethostname()
    parent = (CONF.oslo_concurrency.lock_path or snapshots_directory or
              CONF.libvirt.snapshots_directory)
    return os.path.join(parent, '.snapdriver-journal-%s' % host)


def _path(journal_dir, uuid):
    return os.path.join(journal_dir, '%s.json' % uuid)


def _process_start(pid):
    """The start time of process ``pid`` (clock ticks), or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            # The command may hold spaces and parentheses: the fields
            # after its closing parenthesis are fixed.
            fields = f.read().rsplit(')', 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path, entry):
    journal_dir = os.path.dirname(path)
    tmp = path + '.tmp'
    for attempt in (1, 2, 3):
        fileutils.ensure_tree(journal_dir, mode=0o700)
        try:
            with open(tmp, 'w') as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            break
        except FileNotFoundError:
            # Another snapshot removed the directory it found empty.
            if attempt == 3:
                raise
    _fsync_dir(journal_dir)


def _remove(path):
    fileutils.delete_if_exists(path)
    try:
        # Nothing of ours stays in snapshots_directory when no snapshot
        # needs undoing; fails (as it should) while other entries exist.
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


@contextlib.contextmanager
def recorded(request, paused):
    """Record a managed save of ``request``'s guest for the ``with`` block.

    The entry is on disk before the block runs, and removed when the block
    ends without an exception (the guest was restored). When it ends with
    one, the entry stays for :func:`recover` unless the guest is active
    again (restored after all).

    :param paused: the guest was paused (restore it paused).
    """
    path = _path(directory(request.snapshots_directory), request.uuid)
    pid = os.getpid()
    _write(path, {'uuid': request.uuid, 'name': request.name,
                  'action': MANAGED_SAVE,
                  'state': 'paused' if paused else 'running',
                  'pid': pid, 'pid_start': _process_start(pid),
                  'time': time.time()})
    try:
        yield
    except BaseException:
        # Kept only when there is a managed save to give back: a guest that
        # runs again, or that shut itself down before the save, has none.
        if _is_active(request.guest) or not _has_managed_save(request.guest):
            _remove(path)
        raise
    _remove(path)


def _has_managed_save(guest):
    try:
        return bool(guest._domain.hasManagedSaveImage(0))
    except Exception:
        # Cannot tell: keep the entry; recovery checks again.
        return True


def _is_active(guest):
    try:
        return bool(guest.is_active())
    except Exception:
        return False


def _tmp_writer_alive(path):
    try:
        with open(path) as f:
            return _writer_alive(json.load(f))
    except (OSError, ValueError):
        # Not even a whole entry: its writer died mid-write, or is writing
        # it now; the latter renames it within microseconds.
        return False


def _writer_alive(entry):
    pid = entry.get('pid')
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    start = _process_start(pid)
    return start is not None and start == entry.get('pid_start')


def uuids(snapshots_directory=None):
    """The domain uuids with an entry (or a half-written one) here."""
    journal_dir = directory(snapshots_directory)
    try:
        names = os.listdir(journal_dir)
    except OSError:
        return set()
    return {name.split('.', 1)[0].lower() for name in names
            if name.endswith(('.json', '.json.tmp'))}


def recover(conn, snapshots_directory=None, uuid=None, instance=None):
    """Give back the state of every guest an interrupted snapshot saved.

    :param conn: an open ``libvirt.virConnect``.
    :param uuid: only this domain's entry; ``None`` for all of this host.
    :param instance: the Nova instance, for logs, or ``None``.
    :returns: a list of sentences saying what was done, for logs/tests.
    """
    journal_dir = directory(snapshots_directory)
    if not os.path.isdir(journal_dir):
        return []
    names = (['%s.json' % uuid, '%s.json.tmp' % uuid] if uuid
             else sorted(os.listdir(journal_dir)))
    for name in names:
        path = os.path.join(journal_dir, name)
        if name.endswith('.json.tmp') and os.path.exists(path):
            # A process killed while it wrote its entry: the managed save
            # it was about to start never began (unless it still runs).
            if not _tmp_writer_alive(path):
                _remove(path)
    done = []
    for name in names:
        path = os.path.join(journal_dir, name)
        if not name.endswith('.json') or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError) as e:
            LOG.warning('Unreadable snapshot journal entry %(path)s, '
                        'removed: %(err)s', {'path': path, 'err': e})
            _remove(path)
            continue
        if _writer_alive(entry):
            # A snapshot of it runs in another process (the snapdriver
            # command, or a compute service not yet dead): its own.
            continue
        outcome = _recover_one(conn, entry, instance)
        if outcome is not None:
            done.append(outcome)
        _remove(path)
    return done


def _save_running(dom):
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError:
        return False
    return (stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE) !=
            libvirt.VIR_DOMAIN_JOB_NONE and
            stats.get('operation') == libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE)


def _wait_for_save(dom, name, log_kw):
    """Wait while libvirtd runs a save job of ``dom`` (at most
    :data:`SAVE_WAIT` seconds).

    A process killed during its managed save leaves libvirtd saving the
    domain, which is active until the save ends: recovery must not take it
    for a guest that runs again.
    """
    if not dom.isActive() or not _save_running(dom):
        return
    LOG.info('Waiting for the managed save of domain %(name)s, begun by '
             'an interrupted snapshot, to end', {'name': name}, **log_kw)
    deadline = time.monotonic() + SAVE_WAIT
    while _save_running(dom):
        if time.monotonic() > deadline:
            LOG.warning('The managed save of domain %(name)s, begun by an '
                        'interrupted snapshot, still runs after %(t)d s; '
                        'if it ends, start the domain with "virsh start '
                        '%(name)s" to restore its memory',
                        {'name': name, 't': SAVE_WAIT}, **log_kw)
            return
        time.sleep(SAVE_POLL)


def _recover_one(conn, entry, instance):
    uuid = entry.get('uuid')
    name = entry.get('name', uuid)
    log_kw = {'instance': instance} if instance is not None else {}
    try:
        dom = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        LOG.warning('Domain %(name)s, managed-saved by an interrupted '
                    'snapshot, no longer exists', {'name': name}, **log_kw)
        return None
    _wait_for_save(dom, name, log_kw)
    if dom.isActive():
        return None
    if not dom.hasManagedSaveImage(0):
        LOG.warning('Domain %(name)s was managed-saved by an interrupted '
                    'snapshot but has no managed save image any more; it '
                    'is left shut off', {'name': name}, **log_kw)
        return None
    paused = entry.get('state') == 'paused'
    flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
    try:
        dom.createWithFlags(flags)
    except libvirt.libvirtError as e:
        LOG.error('Could not restore domain %(name)s, managed-saved by an '
                  'interrupted snapshot: %(err)s. Start it with "virsh '
                  'start %(name)s" to restore its memory.',
                  {'name': name, 'err': e}, **log_kw)
        return None
    outcome = ('restored domain %s to %s from the managed save of an '
               'interrupted snapshot' % (name, entry.get('state')))
    LOG.warning('Restored domain %(name)s to %(state)s from the managed '
                'save of an interrupted snapshot', {
                    'name': name, 'state': entry.get('state')}, **log_kw)
    return outcome
