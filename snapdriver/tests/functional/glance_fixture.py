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

"""A real Glance API, served by gunicorn on 127.0.0.1, for tests and the
demo.

Nothing is faked: the fixture writes a ``glance-api.conf`` with a file
store, migrates an SQLite database with ``glance-manage db_sync`` and
serves ``glance.wsgi.api:application`` under gunicorn (glance-api no
longer runs standalone). Without Keystone (``[paste_deploy] flavor`` is
empty) Glance's ``unauthenticated-context`` middleware makes every request
an admin request, so Nova's own image API (``nova.image.glance.API``)
talks to it with ``[glance] api_servers`` and no token.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request

import fixtures
from oslo_concurrency import processutils
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

_GLANCE_API_CONF = """[DEFAULT]
bind_host = 127.0.0.1
bind_port = %(port)d
enabled_backends = fs:file
show_image_direct_url = False
log_file = %(log_file)s
debug = False

[database]
connection = sqlite:///%(db)s

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = %(images)s

[os_glance_staging_store]
filesystem_store_datadir = %(staging)s

[os_glance_tasks_store]
filesystem_store_datadir = %(tasks)s

[paste_deploy]
# Empty: the "glance-api" pipeline, without Keystone.
flavor =
config_file = %(paste)s

[oslo_policy]
policy_file = %(policy)s
# The unauthenticated context has no project: no scope to check.
enforce_scope = False
"""

# NOTE: without Keystone, Glance's unauthenticated-context middleware
# builds an is_admin context with no roles and no project, which the
# default policies (role:admin, or a member of the image's project) refuse
# with 403. Here every request is the admin: this Glance only listens on
# 127.0.0.1 and lives as long as one test or demo.
_POLICY = '''"context_is_admin": ""
'''

#: Seconds to wait for the API to answer after gunicorn starts.
START_TIMEOUT = 90


def glance_unavailable_reason():
    """Tell why a real Glance API cannot run here.

    :returns: A reason, or ``None`` when glance, gunicorn and glance's
        paste file are installed in this Python environment.
    """
    try:
        import glance  # noqa: F401
    except ImportError:
        return ('glance is not installed (pip install "glance==33.*", as '
                'test-requirements.txt does)')
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return 'gunicorn is not installed (pip install gunicorn)'
    if find_paste_ini() is None:
        return ("glance's glance-api-paste.ini is not installed under %s"
                % sys.prefix)
    if _glance_manage() is None:
        return 'the glance-manage command is not installed'
    return None


def find_paste_ini():
    """Return the glance-api-paste.ini the glance wheel installed, or None."""
    for base in (sys.prefix, sysconfig.get_path('data')):
        path = os.path.join(base, 'etc', 'glance', 'glance-api-paste.ini')
        if os.path.isfile(path):
            return path
    return None


def _glance_manage():
    # The console script next to this interpreter, so a venv's glance is
    # used even when the venv is not on PATH.
    path = os.path.join(os.path.dirname(sys.executable), 'glance-manage')
    if os.access(path, os.X_OK):
        return path
    return shutil.which('glance-manage')


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class GlanceAPI(fixtures.Fixture):
    """A Glance API process on 127.0.0.1, stopped and removed at cleanup.

    :ivar endpoint: ``http://127.0.0.1:PORT``, for ``[glance] api_servers``.
    :ivar port: The TCP port.
    :ivar workdir: The private directory with the config, the database,
        the image store and the logs.
    :ivar process: The gunicorn ``subprocess.Popen``.
    """

    def __init__(self, parent_dir=None, start_timeout=START_TIMEOUT):
        """:param parent_dir: Where to make the private work directory;
            the system temporary directory by default.
        :param start_timeout: Seconds to wait for the API to answer.
        """
        super().__init__()
        self.parent_dir = parent_dir
        self.start_timeout = start_timeout
        self.endpoint = None
        self.port = None
        self.workdir = None
        self.process = None

    def _setUp(self):
        reason = glance_unavailable_reason()
        if reason is not None:
            raise RuntimeError('cannot run a Glance API: %s' % reason)
        # mkdtemp: 0o700, only this user reads the store and the database.
        self.workdir = tempfile.mkdtemp(prefix='snapdriver-glance-',
                                        dir=self.parent_dir)
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        conf_dir = os.path.join(self.workdir, 'etc')
        os.mkdir(conf_dir, 0o700)
        for sub in ('images', 'staging', 'tasks'):
            os.mkdir(os.path.join(self.workdir, sub), 0o700)
        paste = os.path.join(conf_dir, 'glance-api-paste.ini')
        shutil.copyfile(find_paste_ini(), paste)
        self.port = free_port()
        self.endpoint = 'http://127.0.0.1:%d' % self.port
        self.log_file = os.path.join(self.workdir, 'glance-api.log')
        self.gunicorn_log = os.path.join(self.workdir, 'gunicorn.log')
        policy_file = os.path.join(conf_dir, 'policy.yaml')
        with open(policy_file, 'w') as f:
            f.write(_POLICY)
        conf_file = os.path.join(conf_dir, 'glance-api.conf')
        with open(conf_file, 'w') as f:
            f.write(_GLANCE_API_CONF % {
                'port': self.port,
                'log_file': self.log_file,
                'db': os.path.join(self.workdir, 'glance.sqlite'),
                'images': os.path.join(self.workdir, 'images'),
                'staging': os.path.join(self.workdir, 'staging'),
                'tasks': os.path.join(self.workdir, 'tasks'),
                'paste': paste,
                'policy': policy_file,
            })
        processutils.execute(_glance_manage(), '--config-file', conf_file,
                             'db_sync', timeout=300)
        self._start(conf_dir)

    def _start(self, conf_dir):
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=conf_dir)
        cmd = [sys.executable, '-m', 'gunicorn',
               '--bind', '127.0.0.1:%d' % self.port,
               '--workers', '1',
               # An upload of a large snapshot is one long request.
               '--timeout', '3600',
               '--error-logfile', self.gunicorn_log,
               'glance.wsgi.api:application']
        with open(os.devnull, 'rb') as devnull:
            # A session of its own: Ctrl-C in a terminal reaches only us,
            # and the cleanup stops gunicorn and its worker together.
            self.process = subprocess.Popen(
                cmd, env=env, stdin=devnull, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, cwd=self.workdir,
                start_new_session=True)
        self.addCleanup(self._stop)
        self._wait_until_up()
        LOG.info('Glance API serving on %s (pid %d)', self.endpoint,
                 self.process.pid)

    def _wait_until_up(self):
        deadline = time.monotonic() + self.start_timeout
        url = self.endpoint + '/versions'
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    'glance-api (gunicorn) exited with %s before it '
                    'answered:\n%s' % (self.process.returncode,
                                       self.log_tail()))
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status in (200, 300):
                        return
            except urllib.error.HTTPError as e:
                if e.code == 300:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    'glance-api did not answer on %s within %d s:\n%s'
                    % (url, self.start_timeout, self.log_tail()))
            time.sleep(0.3)

    def log_tail(self, lines=30):
        """Return the last lines of gunicorn's and Glance's logs."""
        out = []
        for path in (self.gunicorn_log, self.log_file):
            try:
                with open(path, errors='replace') as f:
                    out.extend(f.read().splitlines()[-lines:])
            except OSError:
                pass
        return '\n'.join(out)

    def _stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(15)

    def image_files(self):
        """Return the files in the image store (one per uploaded image)."""
        return sorted(os.listdir(os.path.join(self.workdir, 'images')))
