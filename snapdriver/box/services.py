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

"""A compute host in a box: the OpenStack services of one Nova compute
host, on 127.0.0.1, from the packages of this Python environment.

Real: Keystone (sqlite, fernet tokens, ``keystone-manage bootstrap``),
MariaDB (Nova's databases, a server of its own),
RabbitMQ (the distribution's ``rabbitmq-server``, a node of its own),
placement, Glance (file store, Keystone auth), nova-api (over HTTP),
nova-conductor, nova-scheduler and nova-compute with
``compute_driver = snapdriver.LibvirtSnapshotDriver`` on the host's real
libvirtd. The APIs run under gunicorn, as their projects ask. Stand-in:
Neutron (:mod:`snapdriver.box.neutron_standin`, a network API with no
networks; servers boot with ``--nic none``).

The order and the options follow devstack's ``lib/keystone``,
``lib/placement``, ``lib/glance`` and ``lib/nova``: databases by each
project's ``*-manage``, cell0 and cell1 mapped with ``nova-manage
cell_v2``, the compute host discovered with ``cell_v2 discover_hosts``.

Everything the box makes lives in one directory (``box.json`` records the
processes, ports and credentials); :meth:`Box.stop` deletes the servers
through the API, then stops every process, removes any libvirt domain
whose disks are in the box and deletes the directory.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import uuid

#: The cloud name in the box's clouds.yaml (``OS_CLOUD``).
CLOUD_NAME = 'snapdriver-box'
#: Default place of the box; QEMU (user libvirt-qemu) must traverse it.
DEFAULT_BOX_DIR = '/var/tmp/snapdriver-box'
REGION = 'RegionOne'
ADMIN_USER = 'admin'
FLAVOR_NAME = 'snapbox.tiny'
LIBVIRT_URI = 'qemu:///system'
#: The services in the order they are stopped (reverse of start).
STOP_ORDER = ('nova-compute', 'nova-scheduler', 'nova-conductor',
              'nova-api', 'neutron-standin', 'glance-api', 'placement-api',
              'keystone', 'rabbitmq', 'mariadb')


class BoxError(Exception):
    """The box could not be started or used; the message says why."""


def _bin(name):
    """A console script of this Python environment (or PATH's)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if found is None:
        raise BoxError('%s is not installed ("tox -e box" installs the '
                       'box\'s packages)' % name)
    return found


def _sbin(name):
    for path in ('/usr/sbin/' + name, '/usr/bin/' + name):
        if os.access(path, os.X_OK):
            return path
    raise BoxError('%s is not installed (tools/setup-host.sh --profile box '
                   'installs it)' % name)


def _etc(*parts):
    """A file the wheels installed under ``<prefix>/etc``."""
    for base in (sys.prefix, sysconfig.get_path('data')):
        path = os.path.join(base, 'etc', *parts)
        if os.path.isfile(path):
            return path
    raise BoxError('%s is not installed under %s' % (
        os.path.join('etc', *parts), sys.prefix))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _write(path, text, mode=0o600):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, mode)


def _ini(sections):
    """Render ``{section: {key: value}}`` as an ini file."""
    out = []
    for section, values in sections.items():
        out.append('[%s]' % section)
        out.extend('%s = %s' % (k, v) for k, v in values.items())
        out.append('')
    return '\n'.join(out)


def _sqlite_url(path):
    """An SQLAlchemy URL for an sqlite file of one service.

    A service's workers (two for Keystone) may write at once: a writer
    waits up to a minute for the other, not sqlite's default 5 s.
    """
    return 'sqlite:///%s?timeout=60' % path


def _wal(path):
    """Put an sqlite database in WAL mode (persistent, in the file).

    Readers then no longer block the writer, nor the writer the readers.
    """
    import sqlite3
    conn = sqlite3.connect(path)
    try:
        conn.execute('PRAGMA journal_mode=WAL')
    finally:
        conn.close()


def unavailable_reason():
    """Why the box cannot run on this host, or None."""
    if os.geteuid() != 0:
        return ('the box needs root (nova-compute drives qemu:///system '
                'and chowns instance files; rabbitmq runs as its own user)')
    for mod in ('keystone', 'placement', 'glance', 'nova', 'gunicorn',
                'openstackclient', 'novaclient', 'libvirt', 'pymysql'):
        try:
            __import__(mod)
        except ImportError:
            return ('%s is not installed in this Python environment ("tox '
                    '-e box" installs the box\'s packages)' % mod)
    if not os.path.exists('/usr/lib/rabbitmq/bin/rabbitmq-server'):
        return ('rabbitmq-server is not installed (tools/setup-host.sh '
                '--profile box installs it)')
    if not os.path.exists('/usr/sbin/mariadbd'):
        return ('mariadb-server is not installed (tools/setup-host.sh '
                '--profile box installs it)')
    return None


class Box(object):
    """One compute host in a box, rooted at ``box_dir``.

    :param box_dir: the box's directory (made, 0711; it must not exist or
        be a box that was stopped).
    :param say: a callable taking one line of progress.
    """

    def __init__(self, box_dir=DEFAULT_BOX_DIR, say=None):
        self.dir = os.path.abspath(box_dir)
        self.say = say or (lambda line: None)
        self.state_file = os.path.join(self.dir, 'box.json')
        self.state = {}
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def clouds_yaml(self):
        return self.path('clouds.yaml')

    @property
    def openrc(self):
        return self.path('openrc')

    @property
    def instances_path(self):
        return self.path('instances')

    @property
    def snapshots_path(self):
        return self.path('instances', 'snapshots')

    def log(self, name):
        return self.path('logs', '%s.log' % name)

    # -- state ---------------------------------------------------------

    def load(self):
        """Read ``box.json``; return False when there is no box."""
        try:
            with open(self.state_file) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            return False
        return True

    def save(self):
        # Start-up threads save concurrently.
        with self._lock:
            tmp = self.state_file + '.tmp'
            _write(tmp, json.dumps(self.state, indent=2, sort_keys=True))
            os.replace(tmp, self.state_file)

    def client_env(self):
        """Environment for a client process (openstack, nova) of the box."""
        env = dict(os.environ)
        for key in list(env):
            if key.startswith('OS_'):
                del env[key]
        env['OS_CLIENT_CONFIG_FILE'] = self.clouds_yaml
        env['OS_CLOUD'] = CLOUD_NAME
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + \
            env.get('PATH', '')
        return env

    def processes(self):
        return self.state.get('processes', {})

    def running(self):
        """Names of the box's processes that are alive."""
        alive = []
        for name, info in self.processes().items():
            try:
                os.kill(info['pid'], 0)
            except ProcessLookupError:
                continue
            alive.append(name)
        return alive

    # -- start ---------------------------------------------------------

    def start(self, strategies=None):
        """Make the box and start every service; return the seconds taken.

        Raises :class:`BoxError` (the box is then stopped and removed).
        """
        t0 = time.monotonic()
        if os.path.exists(self.state_file):
            raise BoxError('a box exists in %s: "snapdriver box stop '
                           '--box-dir %s" first' % (self.dir, self.dir))
        reason = unavailable_reason()
        if reason:
            raise BoxError(reason)
        try:
            self._make_dirs()
            self._plan(strategies)
            self.save()
            self._start_all()
        except BaseException:
            self.say('start failed')
            self.save_logs()
            self.stop(keep_logs=bool(os.environ.get('SNAPDRIVER_BOX_KEEP')))
            raise
        self.state['ready'] = True
        self.state['start_seconds'] = round(time.monotonic() - t0, 1)
        self.save()
        return self.state['start_seconds']

    def save_logs(self):
        """Copy the logs out of the box (stop() removes the box)."""
        dest = self.dir.rstrip('/') + '-failed-logs'
        try:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.path('logs'), dest)
            self.say('logs copied to %s' % dest)
        except OSError:
            pass

    def _make_dirs(self):
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        os.makedirs(self.dir, exist_ok=True)
        # QEMU, running as libvirt-qemu, opens the instance files below:
        # every directory on the way must be traversable, none of ours
        # listable or writable by others.
        os.chmod(self.dir, 0o711)
        for sub in ('logs', 'etc', 'run', 'locks', 'nova-state',
                    'instances', 'glance', 'keystone'):
            os.makedirs(self.path(sub), exist_ok=True)
            os.chmod(self.path(sub), 0o700)
        os.chmod(self.instances_path, 0o711)

    def _plan(self, strategies):
        ports = {}
        for name in ('keystone', 'placement', 'glance', 'nova', 'neutron',
                     'rabbit', 'rabbit_dist', 'epmd', 'mariadb'):
            ports[name] = free_port()
        self.state = {
            'dir': self.dir,
            'ports': ports,
            'password': uuid.uuid4().hex,
            'rabbit_password': uuid.uuid4().hex,
            'db_password': uuid.uuid4().hex,
            'rabbit_node': 'snapbox-%s@localhost' % uuid.uuid4().hex[:8],
            'strategies': strategies,
            'processes': {},
            'python': sys.executable,
        }

    def url(self, service):
        return 'http://127.0.0.1:%d' % self.state['ports'][service]

    @property
    def auth_url(self):
        return self.url('keystone') + '/v3'

    def _start_all(self):
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=6)
        try:
            rabbit = pool.submit(self._timed, 'rabbitmq', self._rabbitmq)
            mariadb = pool.submit(self._timed, 'mariadb', self._mariadb)
            keystone = pool.submit(self._timed, 'keystone', self._keystone)
            dbs = [pool.submit(self._timed, name, fn) for name, fn in (
                ('placement db', self._placement_db),
                ('glance db', self._glance_db),
                ('nova dbs', lambda: (mariadb.result(), self._nova_dbs())))]
            self._write_nova_conf()
            keystone.result()
            apis = [pool.submit(self._timed, name, fn) for name, fn in (
                ('catalog', self._catalog),
                ('neutron stand-in', self._neutron_standin))]
            for f in dbs:
                f.result()
            apis += [pool.submit(self._timed, name, fn) for name, fn in (
                ('placement', self._placement_api),
                ('glance', self._glance_api),
                ('nova-api', self._nova_api))]
            rabbit.result()
            for name in ('nova-conductor', 'nova-scheduler'):
                self._spawn(name, [_bin(name), '--config-file',
                                   self.path('etc', 'nova.conf')])
            for f in apis:
                f.result()
            self._timed('nova-compute', self.start_compute)
            images = pool.submit(self._timed, 'images', self._images)
            self._timed('flavor', self._flavor)
            images.result()
        finally:
            pool.shutdown(wait=True)
        self._write_client_files()

    def _timed(self, what, fn):
        t0 = time.monotonic()
        result = fn()
        self.say('%-18s ready in %5.1f s' % (what, time.monotonic() - t0))
        return result

    # -- processes -----------------------------------------------------

    def _spawn(self, name, cmd, env=None, cwd=None, user=None):
        """Start a service in a session of its own; record its pid."""
        log = open(self.log(name), 'ab')
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + \
            full_env.get('PATH', '') + ':/usr/sbin:/sbin'
        if user:
            cmd = ['runuser', '-u', user, '--'] + cmd
        with open(os.devnull, 'rb') as devnull:
            proc = subprocess.Popen(cmd, stdin=devnull, stdout=log,
                                    stderr=subprocess.STDOUT, env=full_env,
                                    cwd=cwd or self.dir,
                                    start_new_session=True)
        log.close()
        self.state['processes'][name] = {'pid': proc.pid, 'cmd': cmd}
        self.save()
        return proc

    def _run(self, cmd, timeout=600, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=full_env,
                              universal_newlines=True, timeout=timeout,
                              cwd=self.dir)
        if proc.returncode != 0:
            raise BoxError('%s failed (exit %d):\n%s' % (
                ' '.join(cmd), proc.returncode, proc.stdout[-3000:]))
        if os.environ.get('SNAPDRIVER_BOX_DEBUG'):
            self.say('  %.1f s: %s' % (time.monotonic() - t0, ' '.join(
                os.path.basename(c) for c in cmd[:4])))
        return proc.stdout

    def _alive(self, name):
        info = self.processes().get(name)
        if not info:
            return False
        try:
            pid, status = os.waitpid(info['pid'], os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid:
            return False
        try:
            os.kill(info['pid'], 0)
        except ProcessLookupError:
            return False
        return True

    def _log_tail(self, name, lines=25):
        try:
            with open(self.log(name), errors='replace') as f:
                return '\n'.join(f.read().splitlines()[-lines:])
        except OSError:
            return ''

    def _wait(self, name, check, timeout=120, what=None):
        """Wait until ``check()`` is true while process ``name`` lives."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except Exception:  # noqa: the service is not up yet
                pass
            if name and not self._alive(name):
                raise BoxError('%s exited; last lines of %s:\n%s' % (
                    name, self.log(name), self._log_tail(name)))
            if time.monotonic() > deadline:
                raise BoxError('%s not ready after %d s; last lines of '
                               '%s:\n%s' % (what or name, timeout,
                                            self.log(name),
                                            self._log_tail(name)))
            time.sleep(0.3)

    def _http_up(self, url):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500

    def _gunicorn(self, name, app, port, env, workers=1, conf_dir=None):
        """Serve a WSGI application with gunicorn on 127.0.0.1:port.

        NOTE: nova's WSGI application parses ``sys.argv`` (for uwsgi's
        --pyargv), so gunicorn's own arguments would fail it: the options
        go in a gunicorn.conf.py in the working directory instead, and
        gunicorn runs without arguments.
        """
        run_dir = self.path('run', name)
        os.makedirs(run_dir, exist_ok=True)
        _write(os.path.join(run_dir, 'gunicorn.conf.py'),
               'wsgi_app = %r\nbind = %r\nworkers = %d\ntimeout = 3600\n'
               'graceful_timeout = 5\n' % (
                   app, '127.0.0.1:%d' % port, workers))
        self._spawn(name, [sys.executable, '-m', 'gunicorn'], env=env,
                    cwd=run_dir)

    def stop_process(self, name, timeout=15, sig=signal.SIGTERM):
        info = self.processes().get(name)
        if not info:
            return
        pid = info['pid']
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = 0
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
            if done:
                # The leader is gone; its group may still hold workers.
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    # -- RabbitMQ ------------------------------------------------------

    def _rabbitmq(self):
        """A RabbitMQ node of its own, as the rabbitmq user, 127.0.0.1 only.

        NOTE: Debian's /usr/sbin/rabbitmq-server wrapper switches to the
        rabbitmq user and writes to /var/log/rabbitmq; the real script is
        run instead, under runuser, with every path in the box.
        """
        base = self.path('rabbitmq')
        os.makedirs(base, exist_ok=True)
        os.chmod(base, 0o700)
        p = self.state['ports']
        _write(os.path.join(base, 'rabbitmq.conf'),
               'listeners.tcp.1 = 127.0.0.1:%d\n'
               'loopback_users = none\n'
               'default_user = snapbox\n'
               'default_pass = %s\n' % (p['rabbit'],
                                        self.state['rabbit_password']))
        _write(os.path.join(base, 'enabled_plugins'), '[].\n')
        shutil.chown(base, 'rabbitmq', 'rabbitmq')
        for f in os.listdir(base):
            shutil.chown(os.path.join(base, f), 'rabbitmq', 'rabbitmq')
        env = {
            'HOME': '/var/lib/rabbitmq',
            'RABBITMQ_NODENAME': self.state['rabbit_node'],
            'RABBITMQ_NODE_IP_ADDRESS': '127.0.0.1',
            'RABBITMQ_NODE_PORT': str(p['rabbit']),
            'RABBITMQ_DIST_PORT': str(p['rabbit_dist']),
            'ERL_EPMD_ADDRESS': '127.0.0.1',
            'ERL_EPMD_PORT': str(p['epmd']),
            'RABBITMQ_MNESIA_BASE': os.path.join(base, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(base, 'log'),
            'RABBITMQ_CONFIG_FILE': os.path.join(base, 'rabbitmq'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(
                base, 'enabled_plugins'),
            'RABBITMQ_PID_FILE': os.path.join(base, 'pid'),
            # The distribution port on loopback too.
            'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
                '-kernel inet_dist_use_interface {127,0,0,1}',
        }
        self.state['epmd_port'] = p['epmd']
        self._spawn('rabbitmq', ['/usr/lib/rabbitmq/bin/rabbitmq-server'],
                    env=env, user='rabbitmq', cwd='/var/lib/rabbitmq')
        self._wait('rabbitmq', self._amqp_up, timeout=120)

    @property
    def transport_url(self):
        return 'rabbit://snapbox:%s@127.0.0.1:%d/' % (
            self.state['rabbit_password'], self.state['ports']['rabbit'])

    def _amqp_up(self):
        import kombu
        with kombu.Connection(self.transport_url.replace('rabbit://',
                                                         'amqp://'),
                              connect_timeout=2) as conn:
            conn.connect()
        return True

    # -- MariaDB -------------------------------------------------------

    def _mariadb(self):
        """A MariaDB server of its own for Nova's databases.

        NOTE: Nova's API, cell0 and cell1 databases are written by
        nova-api, nova-conductor and nova-scheduler at once. On sqlite
        (even in WAL mode, with a busy timeout) their transactions, which
        oslo.db opens with a plain (deferred) BEGIN, failed now and then
        with "database is locked" when a read turned into a write after
        another process had written: a createImage or a boot then failed.
        devstack runs Nova on MySQL; so does the box. The services with a
        single writer (Keystone, placement, Glance) keep sqlite.
        """
        data = self.path('mariadb')
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, 'mysql', 'mysql')
        os.chmod(data, 0o700)
        self._run(['mariadb-install-db', '--no-defaults',
                   '--datadir=%s' % data, '--user=mysql',
                   '--auth-root-authentication-method=normal',
                   '--skip-test-db'])
        sock = os.path.join(data, 'mysqld.sock')
        self._spawn('mariadb', [
            _sbin('mariadbd'), '--no-defaults', '--datadir=%s' % data,
            '--user=mysql', '--socket=%s' % sock,
            '--port=%d' % self.state['ports']['mariadb'],
            '--bind-address=127.0.0.1', '--skip-name-resolve',
            '--pid-file=%s' % os.path.join(data, 'mysqld.pid'),
            '--innodb-buffer-pool-size=64M', '--max-connections=500',
            # A throwaway server: no durability, faster migrations.
            '--innodb-flush-log-at-trx-commit=0',
            '--innodb-flush-method=nosync', '--innodb-doublewrite=0',
            '--innodb-file-per-table=0'])
        self._wait('mariadb', lambda: self._sql(
            'SELECT 1', unix_socket=sock), timeout=120)
        for db in ('nova_api', 'nova_cell0', 'nova_cell1'):
            self._sql('CREATE DATABASE %s CHARACTER SET utf8mb4' % db,
                      unix_socket=sock)
        self._sql("CREATE USER 'nova'@'127.0.0.1' IDENTIFIED BY '%s'"
                  % self.state['db_password'], unix_socket=sock)
        self._sql("GRANT ALL PRIVILEGES ON *.* TO 'nova'@'127.0.0.1'",
                  unix_socket=sock)

    def _sql(self, statement, unix_socket):
        import pymysql
        conn = pymysql.connect(user='root', unix_socket=unix_socket,
                               connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return True

    def db_url(self, name):
        return 'mysql+pymysql://nova:%s@127.0.0.1:%d/%s?charset=utf8' % (
            self.state['db_password'], self.state['ports']['mariadb'], name)

    # -- Keystone ------------------------------------------------------

    def _keystone(self):
        kdir = self.path('keystone')
        conf = self.path('etc', 'keystone.conf')
        _write(conf, _ini({
            'DEFAULT': {'log_file': self.log('keystone-app')},
            'database': {'connection': _sqlite_url(os.path.join(
                kdir, 'keystone.sqlite'))},
            'token': {'provider': 'fernet'},
            'fernet_tokens': {'key_repository': os.path.join(
                kdir, 'fernet-keys')},
            'fernet_receipts': {'key_repository': os.path.join(
                kdir, 'fernet-keys')},
            'credential': {'key_repository': os.path.join(
                kdir, 'credential-keys')},
        }))
        manage = [_bin('keystone-manage'), '--config-file', conf]
        # NOTE: --config-file comes before the sub-command: without it
        # keystone-manage reads /etc/keystone/keystone.conf and writes the
        # keys to /etc/keystone/fernet-keys. The key set-ups do not touch
        # the database: they run beside db_sync.
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [pool.submit(self._run, manage + ['db_sync'])]
            jobs += [pool.submit(self._run, manage + [
                cmd, '--keystone-user', 'root', '--keystone-group', 'root'])
                for cmd in ('fernet_setup', 'credential_setup')]
            for job in jobs:
                job.result()
        _wal(os.path.join(kdir, 'keystone.sqlite'))
        for sub in ('fernet-keys', 'credential-keys'):
            if not os.listdir(os.path.join(kdir, sub)):
                raise BoxError('keystone-manage wrote no keys to %s' %
                               os.path.join(kdir, sub))
        url = self.url('keystone') + '/v3'
        self._run(manage + ['bootstrap',
                            '--bootstrap-password', self.state['password'],
                            '--bootstrap-username', ADMIN_USER,
                            '--bootstrap-project-name', 'admin',
                            '--bootstrap-role-name', 'admin',
                            '--bootstrap-service-name', 'keystone',
                            '--bootstrap-region-id', REGION,
                            '--bootstrap-admin-url', url,
                            '--bootstrap-public-url', url,
                            '--bootstrap-internal-url', url])
        self._gunicorn('keystone', 'keystone.wsgi.api:application',
                       self.state['ports']['keystone'],
                       {'OS_KEYSTONE_CONFIG_DIR': self.path('etc')},
                       workers=2)
        self._wait('keystone', lambda: self._http_up(url), timeout=120)

    def session(self):
        """A keystoneauth session as the box's admin."""
        from keystoneauth1.identity import v3
        from keystoneauth1 import session
        auth = v3.Password(auth_url=self.auth_url, username=ADMIN_USER,
                           password=self.state['password'],
                           project_name='admin', user_domain_id='default',
                           project_domain_id='default')
        return session.Session(auth=auth)

    def _catalog(self):
        sess = self.session()
        endpoints = (
            ('nova', 'compute', self.url('nova') + '/v2.1'),
            ('placement', 'placement', self.url('placement')),
            ('glance', 'image', self.url('glance')),
            ('neutron', 'network', self.url('neutron')),
        )
        for name, stype, url in endpoints:
            resp = sess.post('/services', endpoint_filter={
                'service_type': 'identity', 'interface': 'public'},
                json={'service': {'name': name, 'type': stype}})
            sid = resp.json()['service']['id']
            for interface in ('public', 'internal', 'admin'):
                sess.post('/endpoints', endpoint_filter={
                    'service_type': 'identity', 'interface': 'public'},
                    json={'endpoint': {'service_id': sid, 'url': url,
                                       'interface': interface,
                                       'region_id': REGION}})

    def _auth_section(self):
        """keystoneauth options for a service acting as the box's admin.

        NOTE: one admin user for every service, instead of devstack's
        nova/placement/glance service users: the box has one tenant, and
        fewer users is fewer things to set up and keep in sync.
        """
        return {
            'auth_type': 'password',
            'auth_url': self.auth_url,
            'username': ADMIN_USER,
            'password': self.state['password'],
            'project_name': 'admin',
            'user_domain_name': 'Default',
            'project_domain_name': 'Default',
            'region_name': REGION,
        }

    def _authtoken_section(self):
        section = self._auth_section()
        section['www_authenticate_uri'] = self.auth_url
        section['service_token_roles_required'] = 'True'
        return section

    # -- placement -----------------------------------------------------

    def _placement_db(self):
        conf = self.path('etc', 'placement', 'placement.conf')
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        _write(conf, _ini({
            'DEFAULT': {'log_file': self.log('placement-app')},
            'placement_database': {
                'connection': _sqlite_url(self.path(
                    'placement.sqlite'))},
            'api': {'auth_strategy': 'keystone'},
            'keystone_authtoken': self._authtoken_section(),
        }))
        self._run([_bin('placement-manage'), '--config-file', conf, 'db',
                   'sync'])
        _wal(self.path('placement.sqlite'))

    def _placement_api(self):
        self._gunicorn('placement-api', 'placement.wsgi.api:application',
                       self.state['ports']['placement'],
                       {'OS_PLACEMENT_CONFIG_DIR': self.path(
                           'etc', 'placement')})
        self._wait('placement-api',
                   lambda: self._http_up(self.url('placement')), 120)

    # -- Glance --------------------------------------------------------

    def _glance_db(self):
        gdir = self.path('glance')
        for sub in ('images', 'staging', 'tasks'):
            os.makedirs(os.path.join(gdir, sub), exist_ok=True)
        conf_dir = self.path('etc', 'glance')
        os.makedirs(conf_dir, exist_ok=True)
        paste = os.path.join(conf_dir, 'glance-api-paste.ini')
        shutil.copyfile(_etc('glance', 'glance-api-paste.ini'), paste)
        conf = os.path.join(conf_dir, 'glance-api.conf')
        _write(conf, _ini({
            'DEFAULT': {
                'bind_host': '127.0.0.1',
                'bind_port': self.state['ports']['glance'],
                'enabled_backends': 'fs:file',
                'log_file': self.log('glance-app'),
                # Nova's snapshot upload and the clone's download are
                # single requests; an image is at most a few hundred MiB.
                'image_size_cap': 10 * 1024 ** 3,
            },
            'database': {'connection': _sqlite_url(os.path.join(
                gdir, 'glance.sqlite'))},
            'glance_store': {'default_backend': 'fs'},
            'fs': {'filesystem_store_datadir': os.path.join(gdir, 'images')},
            'os_glance_staging_store': {
                'filesystem_store_datadir': os.path.join(gdir, 'staging')},
            'os_glance_tasks_store': {
                'filesystem_store_datadir': os.path.join(gdir, 'tasks')},
            'paste_deploy': {'flavor': 'keystone', 'config_file': paste},
            'keystone_authtoken': self._authtoken_section(),
        }))
        self._run([_bin('glance-manage'), '--config-file', conf, 'db_sync'])
        _wal(os.path.join(gdir, 'glance.sqlite'))

    def _glance_api(self):
        self._gunicorn('glance-api', 'glance.wsgi.api:application',
                       self.state['ports']['glance'],
                       {'OS_GLANCE_CONFIG_DIR': self.path('etc', 'glance')})
        self._wait('glance-api',
                   lambda: self._http_up(self.url('glance') + '/versions'),
                   120)

    # -- Neutron stand-in ----------------------------------------------

    def _neutron_standin(self):
        self._gunicorn('neutron-standin',
                       'snapdriver.box.neutron_standin:application',
                       self.state['ports']['neutron'],
                       {'SNAPDRIVER_NEUTRON_STANDIN_LOG':
                        self.log('neutron-standin-requests')})
        self._wait('neutron-standin',
                   lambda: self._http_up(self.url('neutron')), 60)

    # -- Nova ----------------------------------------------------------

    def _nova_sections(self, with_db):
        # NOTE: domain names of this box's own: two boxes (or a box and a
        # deployment) on one libvirtd would otherwise both count
        # instance-00000001 onwards, and one server of each fail to boot.
        if 'name_prefix' not in self.state:
            self.state['name_prefix'] = 'snapbox-%s' % os.urandom(3).hex()
            self.save()
        s = {
            'DEFAULT': {
                'instance_name_template': '%s-%%08x' % (
                    self.state['name_prefix']),
                'transport_url': self.transport_url,
                'state_path': self.path('nova-state'),
                'instances_path': self.instances_path,
                'my_ip': '127.0.0.1',
                'compute_driver': 'snapdriver.LibvirtSnapshotDriver',
                'use_rootwrap_daemon': 'False',
                'debug': 'True',
                # The box has no metadata service and no config drive.
                'force_config_drive': 'False',
                # A 2-core host: one worker each is enough.
                'osapi_compute_workers': '1',
                'metadata_workers': '1',
                'graceful_shutdown_timeout': '5',
                # The test guest has no ACPI handler: a clean stop would
                # wait the whole timeout (60 s by default) for nothing.
                'shutdown_timeout': '3',
                # The box waits for nova-compute's first report after a
                # (re)start: report every 2 s, not every 10.
                'report_interval': '2',
            },
            'conductor': {'workers': '1'},
            'scheduler': {'workers': '1'},
            'api': {'auth_strategy': 'keystone'},
            'wsgi': {'api_paste_config': self.path('etc', 'api-paste.ini')},
            'keystone_authtoken': self._authtoken_section(),
            'placement': self._auth_section(),
            'glance': dict(self._auth_section(),
                           api_servers=self.url('glance')),
            'neutron': dict(self._auth_section(),
                            endpoint_override=self.url('neutron'),
                            # nova-api asks for its service token.
                            service_metadata_proxy='False'),
            'service_user': dict(self._auth_section(),
                                 send_service_user_token='False'),
            'oslo_concurrency': {'lock_path': self.path('locks')},
            'oslo_messaging_notifications': {'driver': 'noop'},
            'vnc': {'enabled': 'False'},
            'spice': {'enabled': 'False'},
            'libvirt': {
                'virt_type': self.state['virt_type'],
                'connection_uri': LIBVIRT_URI,
                # No cpu model to check against a TCG host.
                'cpu_mode': 'none' if self.state['virt_type'] == 'qemu'
                else 'host-model',
                # The guest has no network: no need to wait for vifs.
                'live_migration_with_native_tls': 'False',
            },
            'compute': {
                # Nova must not wait for Neutron's port events.
                'live_migration_wait_for_vif_plug': 'False',
                'max_concurrent_snapshots': '2',
            },
            'nova_sys_admin': {'helper_command': self._privsep_helper()},
            'privsep_osbrick': {'helper_command': self._privsep_helper()},
            'vif_plug_linux_bridge_privileged': {
                'helper_command': self._privsep_helper()},
            'vif_plug_ovs_privileged': {
                'helper_command': self._privsep_helper()},
        }
        s['DEFAULT']['vif_plugging_is_fatal'] = 'False'
        s['DEFAULT']['vif_plugging_timeout'] = '0'
        if with_db:
            s['api_database'] = {'connection': self.db_url('nova_api')}
            s['database'] = {'connection': self.db_url('nova_cell1')}
        return s

    def _privsep_helper(self):
        # NOTE: nova's privsep contexts start "sudo privsep-helper" by
        # default; the box runs as root, maybe without sudo, and sudo's
        # secure_path would not find this environment's helper anyway.
        return _bin('privsep-helper')

    def _write_nova_conf(self):
        from snapdriver.tests.functional import writer_guest

        if 'virt_type' not in self.state:
            self.state['virt_type'] = writer_guest.pick_virt_type()
            self.save()
        shutil.copyfile(_etc('nova', 'api-paste.ini'),
                        self.path('etc', 'api-paste.ini'))
        _write(self.path('etc', 'nova.conf'),
               _ini(self._nova_sections(with_db=True)))
        self.write_compute_conf(self.state.get('strategies'))

    def write_compute_conf(self, strategies=None):
        """nova-cpu.conf: nova-compute's options (no database access).

        Options of ``state['compute_options']`` (``{section: {name:
        value}}``, set by :meth:`restart_compute`) are added.
        """
        sections = self._nova_sections(with_db=False)
        if strategies:
            sections['snapdriver'] = {'strategies': ', '.join(strategies)}
        for section, options in self.state.get('compute_options',
                                               {}).items():
            sections.setdefault(section, {}).update(options)
        _write(self.path('etc', 'nova-cpu.conf'), _ini(sections))

    def _nova_dbs(self):
        manage = [_bin('nova-manage'), '--config-file',
                  self.path('etc', 'nova.conf')]
        self._run(manage + ['api_db', 'sync'])
        self._run(manage + ['cell_v2', 'map_cell0', '--database_connection',
                            self.db_url('nova_cell0')])
        self._run(manage + ['db', 'sync'])
        self._run(manage + ['cell_v2', 'create_cell', '--name', 'cell1',
                            '--transport-url', self.transport_url,
                            '--database_connection',
                            self.db_url('nova_cell1')])

    def _nova_api(self):
        self._gunicorn('nova-api', 'nova.wsgi.osapi_compute:application',
                       self.state['ports']['nova'],
                       {'OS_NOVA_CONFIG_DIR': self.path('etc'),
                        # The paste file must come first.
                        'OS_NOVA_CONFIG_FILES': 'api-paste.ini;nova.conf'},
                       workers=2)
        self._wait('nova-api',
                   lambda: self._http_up(self.url('nova') + '/'), 180)

    def start_compute(self, strategies=None):
        """Start nova-compute (again), with ``[snapdriver] strategies``.

        :param strategies: a list of strategy names, or None for the
            driver's default order.
        """
        if strategies is not None or 'strategies' not in self.state:
            self.state['strategies'] = strategies
        self.write_compute_conf(self.state['strategies'])
        if not self.state.get('service_recorded'):
            self._run([sys.executable, '-m', 'snapdriver.box.service_record',
                       '--config-file', self.path('etc', 'nova.conf')])
            self.state['service_recorded'] = True
            self.save()
        t0 = time.time()
        self._spawn('nova-compute', [_bin('nova-compute'), '--config-file',
                                     self.path('etc', 'nova-cpu.conf')])
        self._wait('nova-compute', lambda: self._compute_up(t0),
                   timeout=180, what='nova-compute service')
        if not self.state.get('host_discovered'):
            self._run([_bin('nova-manage'), '--config-file',
                       self.path('etc', 'nova.conf'), 'cell_v2',
                       'discover_hosts'])
            self.state['host_discovered'] = True
            self.save()

    def _compute_up(self, since):
        """nova-compute reported in since ``since`` and has its provider."""
        sess = self.session()
        services = sess.get('/os-services?binary=nova-compute',
                            endpoint_filter={'service_type': 'compute'},
                            headers={'OpenStack-API-Version':
                                     'compute 2.53'}).json()['services']
        import datetime
        for svc in services:
            if svc['state'] != 'up' or not svc.get('updated_at'):
                continue
            updated = datetime.datetime.strptime(
                svc['updated_at'].split('.')[0], '%Y-%m-%dT%H:%M:%S')
            updated = updated.replace(tzinfo=datetime.timezone.utc)
            # NOTE: strictly after the start: the process stopped just
            # before reported until it died, and a request sent while the
            # new one is in init_host() has its task state cleared there.
            # The reports start only once init_host() is done.
            if updated.timestamp() > since:
                self.state['compute_host'] = svc['host']
                rps = sess.get('/resource_providers', endpoint_filter={
                    'service_type': 'placement'}).json()
                return bool(rps['resource_providers'])
        return False

    def restart_compute(self, strategies=None, options=None):
        """Stop nova-compute and start it with other strategies.

        :param options: ``{section: {name: value}}`` added to
            nova-cpu.conf (e.g. ``{'workarounds':
            {'disable_libvirt_livesnapshot': 'True'}}``); ``None`` for
            none.
        """
        # NOTE: nova-compute takes 10-20 s to leave on SIGTERM when idle;
        # with no request in flight (the callers wait for task_state None)
        # five seconds of grace are enough.
        self.stop_process('nova-compute', timeout=5)
        self.state['strategies'] = strategies
        self.state['compute_options'] = options or {}
        self.start_compute(strategies)

    # -- flavor and images ---------------------------------------------

    def _flavor(self):
        # NOTE: disk 0: the root disk is as large as the image (a "zero
        # disk flavor", which only an admin may boot from, as the box's
        # one user is).
        sess = self.session()
        body = {'flavor': {'name': FLAVOR_NAME, 'ram': 256, 'vcpus': 1,
                           'disk': 0, 'id': 'snapbox-tiny'}}
        sess.post('/flavors', json=body,
                  endpoint_filter={'service_type': 'compute'})
        self.state['flavor'] = FLAVOR_NAME

    def _images(self):
        from snapdriver.box import guest_images
        self.state['images'] = guest_images.register(self)
        self.save()

    # -- clients -------------------------------------------------------

    def _write_client_files(self):
        cloud = {
            'clouds': {
                CLOUD_NAME: {
                    'auth': {
                        'auth_url': self.auth_url,
                        'username': ADMIN_USER,
                        'password': self.state['password'],
                        'project_name': 'admin',
                        'user_domain_name': 'Default',
                        'project_domain_name': 'Default',
                    },
                    'region_name': REGION,
                    'identity_api_version': 3,
                    'interface': 'public',
                },
            },
        }
        # JSON is YAML.
        _write(self.clouds_yaml, json.dumps(cloud, indent=2) + '\n')
        _write(self.openrc, '\n'.join([
            '# Source this file: . %s' % self.openrc,
            'export OS_CLIENT_CONFIG_FILE=%s' % self.clouds_yaml,
            'export OS_CLOUD=%s' % CLOUD_NAME,
            'export OS_AUTH_URL=%s' % self.auth_url,
            'export OS_USERNAME=%s' % ADMIN_USER,
            'export OS_PASSWORD=%s' % self.state['password'],
            'export OS_PROJECT_NAME=admin',
            'export OS_USER_DOMAIN_NAME=Default',
            'export OS_PROJECT_DOMAIN_NAME=Default',
            'export OS_REGION_NAME=%s' % REGION,
            'export OS_IDENTITY_API_VERSION=3',
            'export OS_COMPUTE_API_VERSION=2.37',
            'export PATH=%s:$PATH' % os.path.dirname(sys.executable),
            '']))

    # -- stop ----------------------------------------------------------

    def stop(self, keep_logs=False):
        """Remove everything the box made; return what was removed."""
        if not self.state and not self.load():
            return []
        removed = []
        if self._alive('nova-api') and self._alive('nova-compute'):
            try:
                removed += self._delete_servers()
            except Exception as e:  # noqa: best effort, domains go below
                self.say('could not delete the servers through the API: '
                         '%s' % e)
        names = [n for n in STOP_ORDER if n in self.processes()]
        names += sorted(set(self.processes()) - set(STOP_ORDER))
        # SIGTERM to all at once, then wait for all: one grace period,
        # not one per service.
        for name in names:
            try:
                os.killpg(self.processes()[name]['pid'], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for name in names:
            self.stop_process(name, timeout=10)
            removed.append('process %s' % name)
        if self.state.get('epmd_port'):
            try:
                subprocess.run(['epmd', '-port', str(self.state['epmd_port']),
                                '-kill'], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        removed += self._remove_domains()
        if keep_logs:
            self.say('keeping %s (SNAPDRIVER_BOX_KEEP)' % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            removed.append('directory %s' % self.dir)
        self.state = {}
        return removed

    def _delete_servers(self):
        sess = self.session()
        ep = {'service_type': 'compute'}
        servers = sess.get('/servers', endpoint_filter=ep).json()['servers']
        for server in servers:
            sess.delete('/servers/%s' % server['id'], endpoint_filter=ep,
                        raise_exc=False)
        deleted = ['server %s' % s['id'] for s in servers]
        deadline = time.monotonic() + 60
        while servers and time.monotonic() < deadline:
            servers = sess.get('/servers', endpoint_filter=ep).json()[
                'servers']
            time.sleep(0.5)
        for server in servers:
            self.say('server %s not deleted after 60 s (%s); its domain is '
                     'removed below' % (server['id'], server.get('status')))
        return deleted

    def _remove_domains(self):
        """Remove every libvirt domain with a file in the box."""
        import libvirt

        def _quiet(_ctx, _err):
            pass
        libvirt.registerErrorHandler(_quiet, None)
        removed = []
        try:
            conn = libvirt.open(LIBVIRT_URI)
        except libvirt.libvirtError:
            return removed
        try:
            for dom in conn.listAllDomains():
                try:
                    xml = dom.XMLDesc(0)
                except libvirt.libvirtError:
                    continue
                if self.dir + '/' not in xml:
                    continue
                name = dom.name()
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefineFlags(
                            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                            libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                    removed.append('domain %s' % name)
                except libvirt.libvirtError as e:
                    self.say('could not remove domain %s: %s' % (name, e))
        finally:
            conn.close()
        return removed
