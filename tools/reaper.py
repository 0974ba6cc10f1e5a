#!/usr/bin/env python3
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

"""Start daemons under a process that reaps their orphans at once.

For hosts without an init system (containers, sandboxes), where
tools/setup-host.sh starts virtlogd and libvirtd itself: a QEMU that
libvirtd starts is daemonized, so its parent becomes PID 1 when it forks
away, and when it exits libvirt waits until it has been reaped. systemd
reaps at once; some container init processes only every second or two,
and then every managed save or shutdown of a guest takes that much
longer. This process makes itself the "child subreaper" of what it starts
(``prctl(PR_SET_CHILD_SUBREAPER)``): orphans of the daemons, QEMU
included, become its children, and it reaps each as soon as it exits, as
systemd would. It exits when the last of them has.

Usage (each command a daemon that forks away, as ``libvirtd -d`` does)::

    python3 tools/reaper.py virtlogd -d -- libvirtd -d

It returns once every command has returned: 0 when all succeeded, else 1
with the failed command's error (the daemons already started keep
running, still reaped).
"""

import ctypes
import os
import subprocess
import sys
import tempfile

PR_SET_CHILD_SUBREAPER = 36


def commands(argv):
    command = []
    for arg in argv:
        if arg == '--':
            if command:
                yield command
            command = []
        else:
            command.append(arg)
    if command:
        yield command


def _reap_forever():
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def _start(command):
    """Run ``command``; return '' or what went wrong.

    The command forks its daemon and exits; the daemon, now an orphan,
    becomes a child of this process. Its errors go to a file, not a pipe:
    a daemon that kept the pipe open would leave the read waiting for it.
    """
    try:
        with tempfile.TemporaryFile() as errors:
            done = subprocess.run(command, stderr=errors)
            errors.seek(0)
            message = errors.read().decode(errors='replace').strip()
    except OSError as e:
        return '%s: %s' % (' '.join(command), e)
    if done.returncode:
        return '%s exited with %d: %s' % (' '.join(command),
                                          done.returncode, message)
    return ''


def main(argv):
    started = list(commands(argv))
    if not started:
        sys.exit(__doc__)
    read_fd, write_fd = os.pipe()
    if os.fork():
        # The caller's process: wait until the daemons have started.
        os.close(write_fd)
        with os.fdopen(read_fd) as status:
            error = status.read()
        if error:
            sys.exit('reaper: %s' % error)
        return 0
    os.close(read_fd)
    os.setsid()
    os.chdir('/')
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    libc = ctypes.CDLL(None, use_errno=True)
    error = ''
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = 'prctl(PR_SET_CHILD_SUBREAPER): %s' % os.strerror(
            ctypes.get_errno())
    for command in [] if error else started:
        error = _start(command)
        if error:
            break
    os.write(write_fd, error.encode())
    os.close(write_fd)
    _reap_forever()
    os._exit(0)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
