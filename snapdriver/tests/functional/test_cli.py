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

"""The ``snapdriver`` command on real domains: strategies, plan, snapshot.

Most tests run ``cli.main([...])`` in this process (with a nova.conf of
their own); one runs the installed console script.
"""

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from snapdriver.cmd import cli
from snapdriver import conf
from snapdriver import qemu_img
from snapdriver import strategies
from snapdriver.tests.functional import fixtures as real

CONF = conf.CONF


class CliTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        reason = real.libvirt_unavailable_reason()
        if reason is not None:
            self.skipTest(reason)
        # main() parses nova.conf into the global CONF; the fixture resets
        # it after each test.
        self.useFixture(config_fixture.Config(CONF))
        # oslo.log's setup replaces the root handlers the test runner
        # captures logs with.
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.cmd.cli.setup_logging', lambda *a, **kw: None))
        self.stderr = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', self.stderr))
        parent = (real.DEFAULT_IMAGES_PARENT
                  if os.access(real.DEFAULT_IMAGES_PARENT, os.W_OK)
                  else tempfile.gettempdir())
        self.workdir = tempfile.mkdtemp(prefix='snapdriver-cli-', dir=parent)
        # QEMU traverses it to reach a live strategy's overlay.
        os.chmod(self.workdir, 0o711)
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.snapshots_directory = os.path.join(self.workdir, 'snapshots')
        os.mkdir(self.snapshots_directory, 0o711)
        self.outdir = os.path.join(self.workdir, 'out')
        os.mkdir(self.outdir, 0o700)
        self.conf_file = self.write_conf()

    def write_conf(self, strategies=None, extra=''):
        path = os.path.join(self.workdir, 'nova.conf')
        with open(path, 'w') as f:
            f.write('[libvirt]\nconnection_uri = %s\nvirt_type = %s\n'
                    'snapshots_directory = %s\n'
                    '[oslo_concurrency]\nlock_path = %s\n'
                    % (real.LIBVIRT_URI,
                       'kvm' if real.kvm_usable() else 'qemu',
                       self.snapshots_directory,
                       os.path.join(self.workdir, 'locks')))
            if strategies is not None:
                f.write('[snapdriver]\nstrategies = %s\n'
                        % ','.join(strategies))
            f.write(extra)
        return path

    def cli(self, *args):
        """Run the command; return (exit code, stdout, stderr)."""
        out = io.StringIO()
        self.stderr.seek(0)
        self.stderr.truncate()
        rc = cli.main(['--config-file', self.conf_file] + list(args),
                      out=out)
        return rc, out.getvalue(), self.stderr.getvalue()

    def make_domain(self, state):
        return self.useFixture(real.RealDomain(start_state=state))

    def plan_line(self, out, name):
        for line in out.splitlines():
            words = line.split()
            if len(words) > 1 and words[1] == name:
                return line
        self.fail('no plan line for %s in:\n%s' % (name, out))


class StrategiesTestCase(CliTestCase):

    def test_lists_every_installed_strategy_with_its_description(self):
        rc, out, _err = self.cli('strategies')
        self.assertEqual(0, rc)
        manager = strategies.Registry.load(strategies.available_names())
        self.assertGreaterEqual(len(manager.strategies), 4)
        for strategy in manager.strategies:
            self.assertTrue(strategy.description)
            self.assertIn('%s' % strategy.description, out)
            line = [ln for ln in out.splitlines()
                    if ln.startswith(strategy.name + ' ')]
            self.assertEqual(1, len(line), out)
            self.assertIn(strategy.description, line[0])
        self.assertIn('[snapdriver] strategies = live-backup, '
                      'live-shallow-rebase, cold-direct-extract, stock', out)

    def test_shows_configured_order(self):
        self.write_conf(['cold-internal', 'live-shallow-rebase'])
        rc, out, _err = self.cli('strategies')
        self.assertEqual(0, rc)
        lines = out.splitlines()
        self.assertTrue(lines[1].startswith('cold-internal '), out)
        self.assertEqual('1', lines[1].split()[1])
        self.assertTrue(lines[2].startswith('live-shallow-rebase '), out)
        self.assertEqual('2', lines[2].split()[1])

    def test_configured_but_not_installed_fails(self):
        self.write_conf(['live-shallow-rebase', 'no-such-strategy'])
        rc, out, _err = self.cli('strategies')
        self.assertEqual(1, rc)
        self.assertIn('Not installed: no-such-strategy', out)

    def test_installed_console_script(self):
        script = os.path.join(os.path.dirname(sys.executable), 'snapdriver')
        if not os.access(script, os.X_OK):
            script = shutil.which('snapdriver')
        if script is None:
            self.skipTest('the snapdriver console script is not installed '
                          '(pip install . installs it)')
        result = subprocess.run(
            [script, '--config-file', self.conf_file, 'strategies'],
            capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn('live-shallow-rebase', result.stdout)
        self.assertIn('cold-direct-extract', result.stdout)


class PlanTestCase(CliTestCase):

    def test_running_guest_gets_the_live_strategy(self):
        domain = self.make_domain('running')
        rc, out, _err = self.cli('plan', domain.name)
        self.assertEqual(0, rc, out)
        self.assertIn('state:    running', out)
        self.assertIn('CHOSEN', self.plan_line(out, 'live-backup'))
        self.assertIn('not considered',
                      self.plan_line(out, 'live-shallow-rebase'))
        self.assertIn('not considered',
                      self.plan_line(out, 'cold-direct-extract'))

    def test_shut_off_guest_skips_live_with_its_reason(self):
        domain = self.make_domain('shutoff')
        rc, out, _err = self.cli('plan', domain.uuid)
        self.assertEqual(0, rc, out)
        self.assertIn('state:    shut off', out)
        for live in ('live-backup', 'live-shallow-rebase'):
            self.assertIn('skipped: the guest is shut off',
                          self.plan_line(out, live))
        self.assertIn('CHOSEN', self.plan_line(out, 'cold-direct-extract'))

    def test_disabled_live_snapshot_is_a_reason(self):
        self.write_conf(extra='[workarounds]\n'
                              'disable_libvirt_livesnapshot = True\n')
        domain = self.make_domain('running')
        rc, out, _err = self.cli('plan', domain.name)
        self.assertEqual(0, rc, out)
        for live in ('live-backup', 'live-shallow-rebase'):
            self.assertIn('[workarounds] disable_libvirt_livesnapshot is set',
                          self.plan_line(out, live))
        self.assertIn('CHOSEN', self.plan_line(out, 'cold-direct-extract'))

    def test_format_option_and_configured_strategy(self):
        self.write_conf(['cold-internal'])
        domain = self.make_domain('paused')
        rc, out, _err = self.cli('plan', domain.name, '--format', 'raw')
        self.assertEqual(0, rc, out)
        self.assertIn('output:   raw', out)
        self.assertIn('CHOSEN', self.plan_line(out, 'cold-internal'))

    def test_no_applicable_strategy_exits_non_zero(self):
        self.write_conf(['stock'])
        domain = self.make_domain('shutoff')
        rc, out, _err = self.cli('plan', domain.name)
        self.assertEqual(1, rc)
        self.assertIn('skipped: stock runs only inside nova-compute',
                      self.plan_line(out, 'stock'))
        self.assertIn('no strategy applies', out)

    def test_unknown_domain(self):
        rc, out, err = self.cli('plan', 'snapdriver-no-such-domain')
        self.assertEqual(1, rc)
        self.assertEqual('', out)
        self.assertIn('no domain named or with UUID '
                      '"snapdriver-no-such-domain" on qemu:///system', err)

    def test_unknown_strategy(self):
        domain = self.make_domain('shutoff')
        rc, _out, err = self.cli('plan', domain.name, '--strategy', 'nope')
        self.assertEqual(2, rc)
        self.assertIn('Unknown snapshot strategies nope', err)
        self.assertIn('cold-direct-extract', err)


class SnapshotTestCase(CliTestCase):

    def assert_guest_intact(self, domain, state):
        self.assertEqual(state, domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertFalse(domain.has_managed_save())
        force = state != 'shutoff'
        report = real.qemu_img_check(domain.disk_path, 'qcow2',
                                     force_share=force)
        self.assertEqual([], real.check_problems(report), report)
        self.assertTrue(real.images_equal(
            domain.disk_path, 'qcow2', domain.images.reference_path, 'raw',
            force_share=force), 'the disk content changed')

    def assert_image(self, path, fmt, domain):
        self.assertTrue(real.images_equal(
            path, fmt, domain.images.reference_path, 'raw'),
            'the image differs from the disk content')
        self.assertIsNone(qemu_img.info(path, fmt).backing_file)

    def test_live_snapshot_of_running_guest_to_file(self):
        domain = self.make_domain('running')
        output = os.path.join(self.outdir, 'live.qcow2')
        workdir = os.path.join(self.workdir, 'work')
        os.mkdir(workdir, 0o711)
        rc, out, err = self.cli('snapshot', domain.name, output,
                                '--format', 'qcow2', '--work-dir', workdir)
        self.assertEqual(0, rc, err)
        self.assert_image(output, 'qcow2', domain)
        self.assert_guest_intact(domain, 'running')
        self.assertIn('strategy:        live-backup', out)
        self.assertIn('guest downtime:  0.000 s', out)
        self.assertIn('output size:     ', out)
        self.assertIn('(%d bytes)' % os.path.getsize(output), out)
        self.assertEqual([], os.listdir(workdir))
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_cold_snapshot_of_paused_guest_to_raw_file(self):
        domain = self.make_domain('paused')
        output = os.path.join(self.outdir, 'cold.raw')
        rc, out, err = self.cli('snapshot', domain.uuid, output,
                                '--strategy', 'cold-direct-extract',
                                '--format', 'raw')
        self.assertEqual(0, rc, err)
        self.assert_image(output, 'raw', domain)
        self.assert_guest_intact(domain, 'paused')
        self.assertIn('strategy:        cold-direct-extract', out)
        self.assertNotIn('guest downtime:  0.000 s', out)
        # The configured snapshots directory was used, and emptied.
        self.assertEqual([], os.listdir(self.snapshots_directory))

    def test_output_mode_follows_the_umask(self):
        # The image holds the guest's data: a umask of 077 keeps it
        # private, as it would any file the user writes.
        domain = self.make_domain('shutoff')
        output = os.path.join(self.outdir, 'private.qcow2')
        old = os.umask(0o077)
        try:
            rc, _out, err = self.cli('snapshot', domain.name, output,
                                     '--format', 'qcow2')
        finally:
            os.umask(old)
        self.assertEqual(0, rc, err)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(output).st_mode))

    def test_existing_output_is_refused_without_force(self):
        domain = self.make_domain('shutoff')
        output = os.path.join(self.outdir, 'exists.qcow2')
        with open(output, 'w') as f:
            f.write('keep me')
        rc, out, err = self.cli('snapshot', domain.name, output)
        self.assertEqual(2, rc)
        self.assertIn('already exists', err)
        self.assertIn('--force', err)
        with open(output) as f:
            self.assertEqual('keep me', f.read())

        rc, out, err = self.cli('snapshot', domain.name, output, '--force',
                                '--format', 'qcow2')
        self.assertEqual(0, rc, err)
        self.assert_image(output, 'qcow2', domain)

    def test_stock_does_not_run_outside_nova(self):
        domain = self.make_domain('running')
        output = os.path.join(self.outdir, 'stock.qcow2')
        rc, _out, err = self.cli('snapshot', domain.name, output,
                                 '--strategy', 'stock')
        self.assertEqual(1, rc)
        self.assertIn('stock runs only inside nova-compute', err)
        self.assertFalse(os.path.exists(output))
        self.assert_guest_intact(domain, 'running')

    def test_unknown_domain(self):
        output = os.path.join(self.outdir, 'none.qcow2')
        rc, out, err = self.cli('snapshot', 'snapdriver-no-such-domain',
                                output)
        self.assertEqual(1, rc)
        self.assertIn('no domain named or with UUID', err)
        self.assertFalse(os.path.exists(output))

    def test_unknown_strategy(self):
        domain = self.make_domain('running')
        output = os.path.join(self.outdir, 'x.qcow2')
        rc, _out, err = self.cli('snapshot', domain.name, output,
                                 '--strategy', 'no-such-strategy')
        self.assertEqual(2, rc)
        self.assertIn('Unknown snapshot strategies no-such-strategy', err)
        self.assertIn('Installed strategies are:', err)
        self.assertFalse(os.path.exists(output))

    def test_missing_output_directory(self):
        domain = self.make_domain('running')
        output = os.path.join(self.outdir, 'no', 'such', 'dir', 'x.qcow2')
        rc, _out, err = self.cli('snapshot', domain.name, output)
        self.assertEqual(2, rc)
        self.assertIn('does not exist', err)

    def test_unwritable_output_directory(self):
        """Refused before libvirt or the guest is looked at."""
        readonly = os.path.join(self.workdir, 'readonly')
        os.mkdir(readonly, 0o555)
        output = os.path.join(readonly, 'x.qcow2')
        args = ['snapshot', 'any-domain', output]
        if os.geteuid() != 0:
            rc, _out, err = self.cli(*args)
        else:
            # root writes anywhere; ask as an unprivileged user.
            rc, err = self._run_as_nobody(args)
        self.assertEqual(2, rc, err)
        self.assertIn('cannot write output %s: the directory %s is not '
                      'writable by this user' % (output, readonly), err)

    def _run_as_nobody(self, args):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            rc = 99
            try:
                os.close(read_fd)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                err = io.StringIO()
                sys.stderr = err
                rc = cli.main(args, out=io.StringIO())
                os.write(write_fd, err.getvalue().encode())
            finally:
                os._exit(rc)
        os.close(write_fd)
        with os.fdopen(read_fd, 'rb') as f:
            err = f.read().decode()
        _pid, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), err


class InterruptTestCase(CliTestCase):

    def test_ctrl_c_during_a_cold_snapshot_restores_the_guest(self):
        domain = self.make_domain('running')
        output = os.path.join(self.outdir, 'interrupted.raw')
        proc = subprocess.Popen(
            [sys.executable, '-m', 'snapdriver.cmd.cli',
             '--config-file', self.conf_file, 'snapshot', domain.name,
             output, '--strategy', 'cold-direct-extract', '--format', 'raw'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        # Wait for the managed save to begin, then press Ctrl-C.
        deadline = time.monotonic() + 120
        while domain.state() == 'running' and proc.poll() is None:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)

        self.assertEqual(130, proc.returncode, err)
        self.assertIn('interrupted', err)
        self.assertEqual('running', domain.state())
        self.assertTrue(domain.is_persistent())
        self.assertFalse(domain.has_managed_save())
        self.assertFalse(os.path.exists(output))
        self.assertEqual([], os.listdir(self.snapshots_directory))
