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

"""What the snapdriver command's sub-commands share: exit codes, errors,
interrupt handling and formatting.

:mod:`snapdriver.cmd.cli`, :mod:`snapdriver.demo` and :mod:`snapdriver.box`
import this module; it imports none of them.
"""

import contextlib
import os
import signal
import stat
import sys
import tempfile


#: Exit codes.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure the command reports in one line, without a traceback."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM while a command runs.

    An ``Exception``, unlike ``KeyboardInterrupt``: the runner and
    :func:`snapdriver.guest_state.held` clean up and restore the guest on
    ``Exception``, and a ``KeyboardInterrupt`` in the middle of a cold
    snapshot would leave the guest managed-saved (shut off).
    """


_RECEIVED = {'signal': None}


def interrupted():
    """Return the name of the signal that interrupted the command, or None.

    Libraries may catch :class:`Interrupted` as any ``Exception`` and raise
    another error instead (oslo.config turns any error in an option lookup
    into ``NoSuchOptError``); callers check this to know an error is really
    an interrupt.
    """
    return _RECEIVED['signal']


@contextlib.contextmanager
def interrupts_as_exceptions():
    """Raise :class:`Interrupted` on the first SIGINT or SIGTERM.

    Later signals only print a note: the guest is being restored and the
    temporary files removed, which an interrupt must not cut short.
    """
    signals = (signal.SIGINT, signal.SIGTERM)
    _RECEIVED['signal'] = None

    def _again(signum, frame):
        sys.stderr.write('snapdriver: cleaning up, please wait\n')

    def _first(signum, frame):
        for sig in signals:
            signal.signal(sig, _again)
        _RECEIVED['signal'] = signal.Signals(signum).name
        raise Interrupted(_RECEIVED['signal'])

    try:
        previous = [(sig, signal.signal(sig, _first)) for sig in signals]
    except ValueError:
        # Not the main thread (an embedding program): leave signals alone.
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler)


def private_dir(parent):
    """Make a private work directory below ``parent``; return its path."""
    # mkdtemp: 0o700; then 0o711 so QEMU can traverse (not list) it to
    # reach the overlay of a live strategy in the work dir below.
    path = tempfile.mkdtemp(prefix='snapdriver-cli-', dir=parent)
    os.chmod(path, stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH)
    return path


def human_size(nbytes):
    """``nbytes`` in B, KiB, MiB or GiB, for people."""
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if nbytes < 1024 or unit == 'GiB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (nbytes, unit)
        nbytes /= 1024.0
