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

"""Tests of snapdriver.qemu_img against the real qemu-img on tiny images."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from unittest import mock

import fixtures
from oslo_concurrency import processutils
from oslo_utils import units
from oslotest import base

from snapdriver import conf
from snapdriver import exception
from snapdriver import qemu_img
from snapdriver.tests.unit import fakes

CONF = conf.CONF


def _write(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


class QemuImgTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)
        self.base = self._path('base.raw')
        qemu_img.create(self.base, 'raw', 4 * units.Mi)
        self.base_data = os.urandom(64 * units.Ki)
        _write(self.base, 0, self.base_data)
        self.overlay = self._path('overlay.qcow2')
        qemu_img.create(self.overlay, 'qcow2', 4 * units.Mi,
                        backing_file=self.base, backing_fmt='raw')

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _fake_qemu_img(self, script):
        path = self._path('fake-qemu-img')
        with open(path, 'w') as f:
            f.write('#!/bin/sh\n' + script + '\n')
        os.chmod(path, stat.S_IRWXU)
        self.useFixture(fixtures.MonkeyPatch(
            'snapdriver.qemu_img.QEMU_IMG', path))

    def test_runs_with_the_service_environment(self):
        # A qemu-img found only through PATH (as one in /usr/local/bin, or
        # the operator's own), run with the locale forced to C and the
        # rest of the service's environment (PATH, TMPDIR, proxies) kept.
        bindir = self._path('bin')
        os.mkdir(bindir)
        seen = self._path('env.seen')
        wrapper = os.path.join(bindir, 'qemu-img')
        with open(wrapper, 'w') as f:
            f.write('#!/bin/sh\nenv > %s\nexec %s "$@"\n'
                    % (seen, shutil.which('qemu-img')))
        os.chmod(wrapper, stat.S_IRWXU)
        self.useFixture(fixtures.EnvironmentVariable(
            'PATH', bindir + os.pathsep + os.environ.get('PATH', '')))
        self.useFixture(fixtures.EnvironmentVariable(
            'SNAPDRIVER_TEST_MARKER', 'kept'))
        self.useFixture(fixtures.EnvironmentVariable('LC_ALL', 'fr_FR.UTF-8'))

        info = qemu_img.info(self.overlay, 'qcow2')

        self.assertEqual(4 * units.Mi, info.virtual_size)
        self.assertTrue(os.path.exists(seen),
                        'the qemu-img found through PATH did not run')
        with open(seen) as f:
            env = dict(line.split('=', 1) for line in f.read().splitlines()
                       if '=' in line)
        self.assertEqual('C', env['LC_ALL'])
        self.assertEqual('C', env['LANG'])
        self.assertEqual('kept', env['SNAPDRIVER_TEST_MARKER'])
        self.assertTrue(env['PATH'].startswith(bindir + os.pathsep))

    def _limits_seen(self, call):
        """Run ``call`` with a qemu-img that records its limits first."""
        seen = self._path('limits.seen')
        self._fake_qemu_img('(ulimit -v; ulimit -t) > %s; exec %s "$@"'
                            % (seen, shutil.which('qemu-img')))
        call()
        with open(seen) as f:
            return f.read().split()

    def test_header_commands_run_under_novas_limits(self):
        # Nova's QEMU_IMG_LIMITS: 1 GiB of address space, 30 s of CPU,
        # set in the child itself (no Python prlimit wrapper in between:
        # the recorded limits are those of qemu-img's own process).
        want = [str(units.Gi // units.Ki), '30']
        self.assertEqual(want, self._limits_seen(
            lambda: qemu_img.info(self.overlay, 'qcow2')))
        self.assertEqual(want, self._limits_seen(
            lambda: qemu_img.measure(self.overlay, 'qcow2', 'qcow2')))
        self.assertEqual(want, self._limits_seen(
            lambda: qemu_img.check(self.overlay, 'qcow2')))

    def test_copy_commands_run_without_limits(self):
        out = self._path('out.qcow2')
        self.assertEqual(['unlimited', 'unlimited'], self._limits_seen(
            lambda: qemu_img.convert(self.overlay, 'qcow2', out, 'qcow2')))

    def test_limits_do_not_go_through_a_python_wrapper(self):
        with mock.patch.object(qemu_img.processutils, 'execute',
                               return_value=('{}', '')) as execute:
            qemu_img._run('info', 'p', ['info'],
                          prlimit=qemu_img.QEMU_IMG_LIMITS)
        self.assertIsNone(execute.call_args.kwargs.get('prlimit'))
        self.assertNotIn('oslo_concurrency.prlimit', execute.call_args.args)

    def _convert_cache_mode(self, mode=None):
        """Convert with ``[snapdriver] convert_cache_mode = mode``; return
        the ``-t`` value qemu-img got.
        """
        if mode is not None:
            CONF.set_override('convert_cache_mode', mode, group='snapdriver')
            self.addCleanup(CONF.clear_override, 'convert_cache_mode',
                            group='snapdriver')
        argv = self._path('argv')
        self._fake_qemu_img('echo "$@" > %s; exec %s "$@"'
                            % (argv, shutil.which('qemu-img')))
        out = self._path('out.qcow2')
        qemu_img.convert(self.overlay, 'qcow2', out, 'qcow2')
        with open(argv) as f:
            words = f.read().split()
        self.assertEqual(4 * units.Mi,
                         qemu_img.info(out, 'qcow2').virtual_size)
        self.assertIn('-t', words)
        return words[words.index('-t') + 1]

    def test_convert_cache_mode_default_is_unsafe(self):
        self.assertEqual('unsafe', self._convert_cache_mode())

    def test_convert_cache_mode_writeback(self):
        self.assertEqual('writeback', self._convert_cache_mode('writeback'))

    def test_convert_cache_mode_none_uses_direct_io(self):
        self.useFixture(fixtures.MockPatch(
            'nova.privsep.utils.supports_direct_io', return_value=True))
        self.assertEqual('none', self._convert_cache_mode('none'))

    def test_convert_cache_mode_none_without_direct_io_is_writeback(self):
        # As Nova does where the filesystem refuses O_DIRECT (tmpfs).
        self.useFixture(fixtures.MockPatch(
            'nova.privsep.utils.supports_direct_io', return_value=False))
        self.assertEqual('writeback', self._convert_cache_mode('none'))

    def test_info_reports_size_and_backing(self):
        info = qemu_img.info(self.overlay, 'qcow2')
        self.assertEqual(4 * units.Mi, info.virtual_size)
        self.assertEqual(self.base, info.backing_file)
        self.assertEqual('raw', info.backing_file_format)

    def test_info_backing_chain_lists_every_layer(self):
        chain = qemu_img.info(self.overlay, 'qcow2', backing_chain=True)
        self.assertEqual(['qcow2', 'raw'], [i.file_format for i in chain])

    def test_info_never_probes_the_format(self):
        # A raw disk whose guest wrote a qcow2 header stays raw.
        fake = self._path('fake.raw')
        shutil.copy(self.overlay, fake)
        info = qemu_img.info(fake, 'raw')
        self.assertEqual('raw', info.file_format)
        self.assertIsNone(info.backing_file)

    def test_format_is_required(self):
        self.assertRaises(ValueError, qemu_img.info, self.overlay, None)

    def test_convert_flattens_the_backing_chain(self):
        out = self._path('out.raw')
        qemu_img.convert(self.overlay, 'qcow2', out, 'raw')
        self.assertTrue(qemu_img.compare(out, 'raw', self.base, 'raw'))
        self.assertIsNone(qemu_img.info(out, 'raw').backing_file)

    def test_convert_of_an_internal_snapshot_shared(self):
        # -U with -l: the snapshot of an image a running QEMU holds.
        qemu_img.snapshot_create(self.overlay, 'snapdriver-s', 'qcow2')
        argv = self._path('argv')
        self._fake_qemu_img('echo "$@" > %s; exec %s "$@"'
                            % (argv, shutil.which('qemu-img')))
        out = self._path('out.raw')
        qemu_img.convert(self.overlay, 'qcow2', out, 'raw',
                         snapshot_name='snapdriver-s', force_share=True)
        with open(argv) as f:
            words = f.read().split()
        self.assertEqual(['-l', 'snapshot.name=snapdriver-s', '-U'],
                         words[5:8])
        self.assertTrue(qemu_img.compare(out, 'raw', self.base, 'raw'))
        self.assertEqual(['snapdriver-s'], qemu_img.snapshot_list(
            self.overlay, 'qcow2', force_share=True))

    def test_convert_shares_only_an_internal_snapshot(self):
        self.assertRaises(ValueError, qemu_img.convert, self.overlay,
                          'qcow2', self._path('o'), 'raw', force_share=True)

    def test_convert_compressed_qcow2(self):
        out = self._path('out.qcow2')
        qemu_img.convert(self.overlay, 'qcow2', out, 'qcow2', compress=True)
        self.assertTrue(qemu_img.compare(out, 'qcow2', self.base, 'raw'))
        self.assertIsNone(qemu_img.info(out, 'qcow2').backing_file)
        self.assertEqual('zlib', self._compression_type(out))

    def _compression_type(self, path):
        out, _err = processutils.execute(
            'qemu-img', 'info', '-f', 'qcow2', '--output=json', path)
        return json.loads(out)['format-specific']['data'][
            'compression-type']

    def test_convert_compressed_zstd(self):
        CONF.set_override('compression_type', 'zstd', group='snapdriver')
        self.addCleanup(CONF.clear_override, 'compression_type',
                        group='snapdriver')
        out = self._path('out.qcow2')
        qemu_img.convert(self.overlay, 'qcow2', out, 'qcow2', compress=True)
        self.assertTrue(qemu_img.compare(out, 'qcow2', self.base, 'raw'))
        self.assertEqual('zstd', self._compression_type(out))
        # Compressed for real: the 64 KiB of random data stay, the rest
        # of the 4 MiB disk costs next to nothing.
        self.assertLess(os.path.getsize(out), 1 * units.Mi)

    def test_compressed_writes_are_parallel(self):
        argv = self._path('argv')
        self._fake_qemu_img('echo "$@" > %s' % argv)
        qemu_img.convert(self.overlay, 'qcow2', self._path('o.qcow2'),
                         'qcow2', compress=True)
        with open(argv) as f:
            words = f.read().split()
        self.assertIn('-c', words)
        self.assertIn('-W', words)
        self.assertIn('compression_type=zlib', words)

    def _serve_nbd(self, image, fmt, export='vda', sockname='nbd sock'):
        """Export ``image`` read-only with qemu-nbd; return its socket."""
        if shutil.which('qemu-nbd') is None:
            self.skipTest('qemu-nbd is not installed (qemu-utils)')
        sock = self._path(sockname)
        proc = subprocess.Popen(
            ['qemu-nbd', '--read-only', '--persistent', '-f', fmt,
             '-x', export, '-k', sock, image],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            self.assertLess(time.monotonic(), deadline, 'qemu-nbd not up')
            time.sleep(0.01)
        return sock

    def test_nbd_unix_uri_escapes_the_socket_path(self):
        self.assertEqual('nbd+unix:///vda?socket=/a%20b/%26%3F%25/sock',
                         qemu_img.nbd_unix_uri('/a b/&?%/sock', 'vda'))

    def test_convert_from_nbd_copies_only_the_data(self):
        # The base holds 64 KiB of data in 4 MiB; the export, read through
        # a socket path with a space (escaped in the URI), must give the
        # same content, and the output only the data: qemu-img skips the
        # holes through NBD block status, allocating no zero clusters.
        sock = self._serve_nbd(self.overlay, 'qcow2')
        out = self._path('out.qcow2')
        qemu_img.convert_from_nbd(qemu_img.nbd_unix_uri(sock, 'vda'), out,
                                  'qcow2')
        self.assertTrue(qemu_img.compare(out, 'qcow2', self.base, 'raw'))
        out_map = json.loads(processutils.execute(
            'qemu-img', 'map', '-f', 'qcow2', '--output=json', out)[0])
        allocated = sum(e['length'] for e in out_map if e['data'])
        self.assertEqual(64 * units.Ki, allocated)

    def test_convert_from_nbd_command_line(self):
        argv = self._path('argv')
        self._fake_qemu_img('echo "$@" > %s' % argv)
        uri = 'nbd+unix:///vda?socket=/s'
        qemu_img.convert_from_nbd(uri, self._path('o.raw'), 'raw')
        with open(argv) as f:
            words = f.read().split()
        self.assertEqual(['convert', '-f', 'raw', '-O', 'raw', '-t',
                          'unsafe', '-m', '16', '-W', '--', uri,
                          self._path('o.raw')], words)

    def test_convert_from_nbd_compressed_in_parallel(self):
        argv = self._path('argv')
        self._fake_qemu_img('echo "$@" > %s' % argv)
        qemu_img.convert_from_nbd('nbd+unix:///vda?socket=/s',
                                  self._path('o.qcow2'), 'qcow2',
                                  compress=True)
        with open(argv) as f:
            words = f.read().split()
        self.assertIn('-c', words)
        self.assertIn('-W', words)
        self.assertIn('compression_type=zlib', words)

    def test_convert_from_nbd_timeout_kills_qemu_img(self):
        self._fake_qemu_img('exec sleep 30')
        self.assertRaises(exception.QemuImgTimeout,
                          qemu_img.convert_from_nbd,
                          'nbd+unix:///vda?socket=/s', self._path('o'),
                          'qcow2', timeout=0.5)

    def test_internal_snapshot_extract_reads_the_snapshot(self):
        qemu_img.snapshot_create(self.overlay, 'snapdriver-t1')
        self.assertEqual(['snapdriver-t1'],
                         qemu_img.snapshot_list(self.overlay))
        # Change the image itself after the snapshot was taken: its
        # current state no longer holds the snapshot's content.
        processutils.execute('qemu-io', '-f', 'qcow2', '-c',
                             'write -q -P 0x78 0 4096', self.overlay)
        current = self._path('current.raw')
        qemu_img.convert(self.overlay, 'qcow2', current, 'raw')
        self.assertFalse(qemu_img.compare(current, 'raw', self.base, 'raw'))
        out = self._path('snap.raw')
        qemu_img.convert(self.overlay, 'qcow2', out, 'raw',
                         snapshot_name='snapdriver-t1')
        self.assertTrue(qemu_img.compare(out, 'raw', self.base, 'raw'))
        qemu_img.snapshot_delete(self.overlay, 'snapdriver-t1')
        self.assertEqual([], qemu_img.snapshot_list(self.overlay))

    def test_extract_missing_snapshot_fails_clearly(self):
        e = self.assertRaises(exception.QemuImgFailed, qemu_img.convert,
                              self.overlay, 'qcow2', self._path('o.raw'),
                              'raw', snapshot_name='nope')
        self.assertIn('snapshot', str(e).lower())

    def test_image_opts_escape_commas(self):
        self.assertEqual(
            'driver=qcow2,file.driver=file,file.filename=/a,,b',
            qemu_img._image_opts('/a,b', 'qcow2'))

    def test_snapshot_on_path_with_comma(self):
        odd = self._path('odd,name.qcow2')
        shutil.copy(self.overlay, odd)
        qemu_img.snapshot_create(odd, 'snapdriver-c')
        self.assertEqual(['snapdriver-c'], qemu_img.snapshot_list(odd))

    def test_rebase_onto_nothing_makes_a_standalone_image(self):
        before = self._path('before.raw')
        shutil.copy(self.base, before)
        qemu_img.rebase(self.overlay, 'qcow2', '')
        self.assertIsNone(qemu_img.info(self.overlay, 'qcow2').backing_file)
        # The overlay holds the data itself: the old base can change.
        _write(self.base, 0, b'z' * len(self.base_data))
        self.assertTrue(qemu_img.compare(self.overlay, 'qcow2',
                                         before, 'raw'))

    def test_measure_covers_the_data(self):
        needed = qemu_img.measure(self.overlay, 'qcow2', 'qcow2')
        self.assertGreaterEqual(needed, len(self.base_data))
        self.assertLess(needed, 4 * units.Mi)

    def test_check_clean_image(self):
        report = qemu_img.check(self.overlay, 'qcow2')
        self.assertEqual(0, report['check-errors'])
        self.assertEqual(0, report.get('corruptions', 0))
        self.assertEqual(0, report.get('leaks', 0))
        self.assertEqual({}, qemu_img.check(self.base, 'raw'))

    def _leak_like_a_killed_snapshot(self, path):
        """Raise one data cluster's refcount to 2, as ``qemu-img snapshot
        -c`` killed after writing the refcounts leaves it (its L2 entry
        keeps the COPIED flag): a leak and an OFLAG_COPIED error.
        """
        out, _err = processutils.execute(
            'qemu-img', 'map', '-f', 'qcow2', '--output=json', path)
        data = [m for m in json.loads(out)
                if m['data'] and m.get('depth', 0) == 0 and 'offset' in m]
        cluster = data[0]['offset'] // (64 * units.Ki)
        with open(path, 'r+b') as f:
            f.seek(48)
            table = int.from_bytes(f.read(8), 'big')
            f.seek(table)
            block = int.from_bytes(f.read(8), 'big')
            f.seek(block + 2 * cluster)
            f.write((2).to_bytes(2, 'big'))

    def test_repair_fixes_a_killed_snapshots_leak(self):
        processutils.execute('qemu-io', '-f', 'qcow2', '-c',
                             'write -P 0x78 0 64k', self.overlay)
        self._leak_like_a_killed_snapshot(self.overlay)
        self.assertRaises(exception.QemuImgFailed, qemu_img.check,
                          self.overlay, 'qcow2')
        before = self._path('before.raw')
        qemu_img.convert(self.overlay, 'qcow2', before, 'raw')

        report = qemu_img.repair(self.overlay, 'qcow2')

        self.assertEqual(0, report.get('corruptions', 0))
        self.assertEqual(0, report.get('leaks', 0))
        clean = qemu_img.check(self.overlay, 'qcow2')
        self.assertEqual(0, clean.get('corruptions', 0))
        self.assertEqual(0, clean.get('leaks', 0))
        self.assertTrue(qemu_img.compare(self.overlay, 'qcow2', before,
                                         'raw'))

    def test_compare_detects_difference(self):
        other = self._path('other.raw')
        shutil.copy(self.base, other)
        _write(other, units.Mi, b'y')
        self.assertFalse(qemu_img.compare(other, 'raw', self.base, 'raw'))

    def test_missing_file_is_a_clear_error(self):
        e = self.assertRaises(exception.QemuImgFailed, qemu_img.convert,
                              self._path('missing.qcow2'), 'qcow2',
                              self._path('o.raw'), 'raw')
        self.assertIn('missing.qcow2', str(e))
        self.assertIn('convert', str(e))

    def test_timeout_kills_the_process(self):
        pidfile = self._path('pid')
        self._fake_qemu_img('echo $$ > %s; exec sleep 30' % pidfile)
        self.flags_timeout = CONF.set_override(
            'qemu_img_timeout', 1, group='snapdriver')
        self.addCleanup(CONF.clear_override, 'qemu_img_timeout',
                        group='snapdriver')
        e = self.assertRaises(exception.QemuImgTimeout, qemu_img.convert,
                              self.overlay, 'qcow2', self._path('o.raw'),
                              'raw')
        self.assertIn('qemu_img_timeout', str(e))
        with open(pidfile) as f:
            pid = int(f.read())
        # The process was killed and reaped: no such process any more.
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    def test_killed_by_signal_is_reported(self):
        self._fake_qemu_img('kill -9 $$')
        e = self.assertRaises(exception.QemuImgFailed, qemu_img.convert,
                              self.overlay, 'qcow2', self._path('o.raw'),
                              'raw')
        self.assertIn('SIGKILL', str(e))

    def test_nonzero_exit_message_is_kept(self):
        self._fake_qemu_img('echo "qemu-img: No space left on device" >&2; '
                            'exit 1')
        e = self.assertRaises(exception.QemuImgFailed, qemu_img.convert,
                              self.overlay, 'qcow2', self._path('o.raw'),
                              'raw')
        self.assertIn('No space left on device', str(e))

    def test_arguments_are_never_a_shell_string(self):
        argsfile = self._path('args')
        self._fake_qemu_img('for a in "$@"; do echo "$a"; done > %s'
                            % argsfile)
        evil = self._path('a; touch pwned')
        qemu_img.convert(evil, 'qcow2', self._path('o.raw'), 'raw')
        with open(argsfile) as f:
            args = f.read().splitlines()
        self.assertIn(evil, args)
        self.assertEqual(['convert', '-f', 'qcow2', '-O', 'raw'], args[:5])
        self.assertFalse(os.path.exists('pwned'))


class DieWithParentTestCase(base.BaseTestCase):
    """qemu-img children die with the process that started them."""

    def test_child_is_killed_when_its_parent_dies(self):
        # A parent (standing in for nova-compute) starts a long child
        # with the preexec_fn qemu_img uses, prints its pid, and is
        # SIGKILLed; the child must not survive it.
        script = (
            'import subprocess, sys\n'
            'from snapdriver import qemu_img\n'
            'p = subprocess.Popen(["sleep", "60"],\n'
            '                     preexec_fn=qemu_img.die_with_parent)\n'
            'print(p.pid, flush=True)\n'
            'sys.stdin.read()\n')
        parent = subprocess.Popen([sys.executable, '-c', script],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        self.addCleanup(parent.kill)
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while os.path.exists('/proc/%d' % child):
            with open('/proc/%d/stat' % child) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    break   # dead, waiting to be reaped by init
            self.assertLess(time.monotonic(), deadline,
                            'the child outlived its parent')
            time.sleep(0.05)


class EmptyQcow2TestCase(base.BaseTestCase):
    """create_empty_qcow2 writes what qemu-img create writes."""

    def setUp(self):
        super().setUp()
        self.dir = fakes.qemu_img_dir(self)
        self.useFixture(fixtures.MockPatchObject(qemu_img, '_EMPTY_QCOW2',
                                                 {}))
        self.template = {'prefix': None, 'size': None, 'confirmed': None}
        self.useFixture(fixtures.MockPatchObject(qemu_img, '_TEMPLATE',
                                                 self.template))

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _bytes(self, path):
        with open(path, 'rb') as f:
            return f.read()

    def test_same_bytes_as_qemu_img_without_a_process(self):
        size = 3 * units.Gi + 64 * units.Ki
        qemu_img.create(self._path('ref.qcow2'), 'qcow2', size)
        qemu_img.create_empty_qcow2(self._path('first.qcow2'), size)
        with mock.patch.object(qemu_img, '_run') as run:
            qemu_img.create_empty_qcow2(self._path('second.qcow2'), size)
        run.assert_not_called()
        ref = self._bytes(self._path('ref.qcow2'))
        self.assertEqual(ref, self._bytes(self._path('first.qcow2')))
        self.assertEqual(ref, self._bytes(self._path('second.qcow2')))
        info = qemu_img.info(self._path('second.qcow2'), 'qcow2')
        self.assertEqual(size, info.virtual_size)
        self.assertIsNone(info.backing_file)

    def test_each_size_is_made_by_qemu_img_once(self):
        with mock.patch.object(qemu_img, 'create',
                               wraps=qemu_img.create) as create:
            for i, size in enumerate((units.Gi, 2 * units.Gi, units.Gi)):
                qemu_img.create_empty_qcow2(self._path('%d' % i), size)
        self.assertEqual(
            [mock.call(self._path('0'), 'qcow2', units.Gi),
             mock.call(self._path('1'), 'qcow2', 2 * units.Gi)],
            create.call_args_list)
        self.assertEqual(self._bytes(self._path('0')),
                         self._bytes(self._path('2')))

    def test_at_most_empty_qcow2_sizes_kept(self):
        self.useFixture(fixtures.MockPatchObject(
            qemu_img, 'EMPTY_QCOW2_SIZES', 2))
        for i in range(1, 4):
            qemu_img.create_empty_qcow2(self._path('%d' % i), i * units.Gi)
        self.assertEqual([2 * units.Gi, 3 * units.Gi],
                         sorted(qemu_img._EMPTY_QCOW2))

    def _confirmed(self, first=units.Gi):
        qemu_img.create_empty_qcow2(self._path('first.qcow2'), first)
        qemu_img.confirm_empty_qcow2(self.dir)
        self.assertTrue(self.template['confirmed'])
        # The probe is gone.
        self.assertEqual(['first.qcow2'], os.listdir(self.dir))

    def test_new_sizes_derived_once_confirmed(self):
        self._confirmed()
        sizes = (64 * units.Mi + 512, 2 * units.Gi, 100 * units.Gi + 512,
                 4 * units.Ti)
        with mock.patch.object(qemu_img, '_run') as run:
            for size in sizes:
                qemu_img.create_empty_qcow2(self._path('%d' % size), size)
        run.assert_not_called()
        for size in sizes:
            self.assert_as_qemu_img_makes_it(self._path('%d' % size), size)
            self.assertEqual(size, qemu_img.info(self._path('%d' % size),
                                                 'qcow2').virtual_size)

    def assert_as_qemu_img_makes_it(self, path, size):
        qemu_img.create(self._path('ref'), 'qcow2', size)
        self.assertTrue(self._bytes(self._path('ref')) == self._bytes(path),
                        'the file of %d bytes differs' % size)

    def assert_made_by_qemu_img(self, path, size):
        with mock.patch.object(qemu_img, 'create',
                               wraps=qemu_img.create) as create:
            qemu_img.create_empty_qcow2(path, size)
        create.assert_called_once_with(path, 'qcow2', size)

    def test_prepared_ahead_of_the_first_snapshot(self):
        qemu_img.prepare_empty_qcow2(self.dir)
        self.assertTrue(self.template['confirmed'])
        self.assertEqual([], os.listdir(self.dir))
        sizes = (qemu_img.PREPARED_QCOW2_SIZE, 2 * units.Gi + 512)
        with mock.patch.object(qemu_img, '_run') as run:
            for size in sizes:
                qemu_img.create_empty_qcow2(self._path('%d' % size), size)
            # A second call (another start of the driver) runs nothing.
            qemu_img.prepare_empty_qcow2(self.dir)
        run.assert_not_called()
        for size in sizes:
            self.assert_as_qemu_img_makes_it(self._path('%d' % size), size)

    def test_prepare_never_raises(self):
        failed = exception.QemuImgFailed(action='create', path='x',
                                         reason='boom')
        with mock.patch.object(qemu_img, '_run', side_effect=failed) as run:
            qemu_img.prepare_empty_qcow2(self.dir)
        run.assert_called_once()
        self.assertIsNone(self.template['prefix'])
        self.assertIsNone(self.template['confirmed'])
        self.assertEqual([], os.listdir(self.dir))
        # The first snapshot then runs qemu-img create itself.
        self.assert_made_by_qemu_img(self._path('first'), units.Gi)

    def test_not_derived_before_the_confirmation(self):
        qemu_img.create_empty_qcow2(self._path('first.qcow2'), units.Gi)
        self.assertIsNotNone(self.template['prefix'])
        self.assert_made_by_qemu_img(self._path('second'), 2 * units.Gi)

    def test_a_mismatch_turns_the_derivation_off(self):
        qemu_img.create_empty_qcow2(self._path('first.qcow2'), units.Gi)
        prefix = bytearray(self.template['prefix'])
        prefix[-1] ^= 1
        self.template['prefix'] = bytes(prefix)
        qemu_img.confirm_empty_qcow2(self.dir)
        self.assertIs(False, self.template['confirmed'])
        self.assert_made_by_qemu_img(self._path('second'), 2 * units.Gi)

    def test_larger_than_4_tib_or_odd_sizes_run_qemu_img(self):
        self._confirmed()
        for size in (5 * units.Ti, units.Gi + 1):
            path = self._path('%d' % size)
            self.assert_made_by_qemu_img(path, size)
            self.assertEqual(-(-size // 512) * 512,
                             qemu_img.info(path, 'qcow2').virtual_size)

    def test_confirmation_never_raises(self):
        qemu_img.create_empty_qcow2(self._path('first.qcow2'), units.Gi)
        qemu_img.confirm_empty_qcow2(self._path('gone'))
        # Left for a later call.
        self.assertIsNone(self.template['confirmed'])

    def test_nothing_to_confirm_before_a_first_file(self):
        with mock.patch.object(qemu_img, 'create') as create:
            qemu_img.confirm_empty_qcow2(self.dir)
        create.assert_not_called()
        self.assertIsNone(self.template['confirmed'])
