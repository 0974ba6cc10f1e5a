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

r"""tempest's API tests against a box of their own.

``tools/run-tempest.sh [REGEX]`` (``tox -e tempest -- [REGEX]``, which
runs ``python -m snapdriver.box.tempest_run``):

1. starts a box (:class:`snapdriver.box.services.Box`) in a new directory
   under ``/var/tmp`` (``--box-dir`` to choose it);
2. creates the disk-1 flavor as the box's admin
   (:func:`snapdriver.box.tempest_conf.create_flavor`);
3. ``tempest init`` a workspace in the box directory (its workspace
   registry and global config directory there too, not in ``~/.tempest``);
4. writes ``etc/tempest.conf`` from the box's state
   (:mod:`snapdriver.box.tempest_conf`);
5. ``tempest run --regex REGEX --concurrency 1`` (REGEX
   ``^tempest\.api\.compute\.images`` unless given);
6. prints the counts of the run, read from the workspace's stestr
   repository;

and, whatever happened, stops the box: its servers deleted, its processes
stopped, the libvirt domains with files in it removed and its directory,
the tempest workspace with it, deleted (``SNAPDRIVER_BOX_KEEP=1`` keeps
the directory, e.g. for tempest's log).
"""

import argparse
import collections
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from snapdriver.box import services
from snapdriver.box import tempest_conf
from snapdriver.cmd import common

#: tempest's compute image API tests (51 in tempest 47).
DEFAULT_REGEX = r'^tempest\.api\.compute\.images'
BOX_PARENT = '/var/tmp'


def count(stream):
    """Count the tests of a subunit v2 stream by their final status.

    :param stream: the bytes of the stream (``stestr last --subunit``).
    :returns: a dict with ``passed``, ``skipped``, ``failed`` (failures
        and unexpected successes) and ``other`` (anything else, e.g. an
        expected failure).
    """
    import subunit
    import testtools

    statuses = collections.Counter()
    result = testtools.StreamToDict(
        lambda test: statuses.update([test['status']]))
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(
            io.BytesIO(stream), non_subunit_name='stdout').run(result)
    finally:
        result.stopTestRun()
    counts = {'passed': statuses.pop('success', 0),
              'skipped': statuses.pop('skip', 0),
              'failed': statuses.pop('fail', 0) +
              statuses.pop('uxsuccess', 0)}
    counts['other'] = sum(statuses.values())
    return counts


def format_counts(counts):
    line = '%(passed)d passed, %(skipped)d skipped, %(failed)d failed' % (
        counts)
    if counts['other']:
        line += ', %d other' % counts['other']
    return line


def _kill_group(proc, timeout=10):
    """SIGTERM the process group of ``proc``, SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _call(cmd, cwd):
    """Run ``cmd`` with our output; return its exit code.

    In a session of its own, so that an interrupt kills stestr's workers
    too, not only tempest.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        _kill_group(proc)
        raise


class TempestRun(object):

    def __init__(self, box_dir, out, regex=DEFAULT_REGEX, concurrency=1):
        self.out = out
        self.t0 = time.monotonic()
        self.box = services.Box(box_dir, say=self.say)
        self.regex = regex
        self.concurrency = concurrency
        self.workspace = self.box.path('tempest')
        self.counts = None

    def say(self, line):
        self.out.write('[%6.1f s] %s\n' % (time.monotonic() - self.t0, line))
        self.out.flush()

    def run(self):
        """Start the box, run tempest; return tempest's exit code."""
        self.say('starting a box in %s' % self.box.dir)
        seconds = self.box.start()
        self.say('box up in %.1f s' % seconds)
        flavor = tempest_conf.create_flavor(self.box)
        self.say('flavor %s (disk 1): %s' % (tempest_conf.FLAVOR_NAME,
                                             flavor))
        tempest = services._bin('tempest')
        global_etc = self.box.path('tempest-etc')
        os.makedirs(global_etc)
        registry = self.box.path('tempest-workspace.yaml')
        rc = _call([tempest, 'init', '--config-dir', global_etc,
                    '--workspace-path', registry, '--name', 'snapdriver-box',
                    self.workspace], self.box.dir)
        if rc:
            raise services.BoxError('tempest init failed (exit %d)' % rc)
        conf = tempest_conf.write(self.box, flavor, self.workspace)
        self.say('tempest workspace %s, %s' % (self.workspace, conf))
        cmd = [tempest, 'run', '--config-file', conf, '--regex', self.regex,
               '--concurrency', str(self.concurrency)]
        self.say('%s (in %s)' % (' '.join(cmd[1:]), self.workspace))
        t0 = time.monotonic()
        rc = _call(cmd, self.workspace)
        self.say('tempest run: exit %d in %.1f s' % (
            rc, time.monotonic() - t0))
        stream = subprocess.run(
            [services._bin('stestr'), 'last', '--subunit'],
            cwd=self.workspace, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL).stdout
        self.counts = count(stream)
        return rc

    def stop(self):
        keep = bool(os.environ.get('SNAPDRIVER_BOX_KEEP'))
        self.say('stopping the box')
        for what in self.box.stop(keep_logs=keep):
            self.say('removed %s' % what)
        # Box.start fails before it writes box.json when the host lacks
        # something: the directory is then ours to remove.
        if not keep and os.path.isdir(self.box.dir):
            shutil.rmtree(self.box.dir, ignore_errors=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='tools/run-tempest.sh',
        description='tempest against a compute host in a box of its own; '
                    'the box is removed at the end.')
    parser.add_argument('regex', nargs='?', default=DEFAULT_REGEX,
                        help='tempest run --regex (default: %(default)s).')
    parser.add_argument('--concurrency', type=int, default=1, metavar='N',
                        help='tempest run --concurrency (default: '
                             '%(default)s).')
    parser.add_argument('--box-dir', metavar='DIR',
                        help='the box directory; it must not exist '
                             '(default: a new directory under %s).'
                             % BOX_PARENT)
    return parser.parse_args(argv)


def main(argv=None, out=None):
    out = out or sys.stdout
    args = parse_args(argv)
    reason = services.unavailable_reason()
    if reason:
        sys.stderr.write('run-tempest: %s\n' % reason)
        return common.EXIT_FAILED
    if args.box_dir:
        if os.path.exists(args.box_dir):
            sys.stderr.write('run-tempest: %s exists\n' % args.box_dir)
            return common.EXIT_USAGE
        box_dir = args.box_dir
    else:
        box_dir = tempfile.mkdtemp(prefix='snapdriver-tempest-',
                                   dir=BOX_PARENT)
    run = TempestRun(box_dir, out, args.regex, args.concurrency)
    rc = common.EXIT_FAILED
    try:
        with common.interrupts_as_exceptions():
            rc = run.run()
    except services.BoxError as e:
        run.say('FAILED: %s' % e)
    except common.Interrupted as e:
        run.say('interrupted by %s' % e)
        rc = 130
    finally:
        # NOTE: a second Ctrl-C must not cut the clean-up short.
        previous = [(sig, signal.signal(sig, signal.SIG_IGN))
                    for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
            run.stop()
        finally:
            for sig, handler in previous:
                signal.signal(sig, handler)
    if run.counts is not None:
        out.write('tempest %s: %s (regex %s)\n' % (
            _tempest_version(), format_counts(run.counts), args.regex))
        if rc == 0 and not sum(run.counts.values()):
            rc = common.EXIT_FAILED
    out.write('run-tempest: exit %d, %.1f s in all\n' % (
        rc, time.monotonic() - run.t0))
    return rc


def _tempest_version():
    from importlib import metadata
    try:
        return metadata.version('tempest')
    except metadata.PackageNotFoundError:
        return '(version unknown)'


if __name__ == '__main__':
    sys.exit(main())
