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

"""How a snapshot was taken, as image properties.

The driver sets these in the same Glance update that uploads the image.
A server booted from a snapshot carries the snapshot's properties in its
system metadata, and Nova copies them into the properties of the server's
own snapshots when it creates the image record: every snapshot therefore
sets all four, so none is ever a stale inherited value.
"""

import datetime
import time

from snapdriver.strategies import base

#: The strategy that took the snapshot.
STRATEGY = 'snapdriver_strategy'
#: UTC ISO 8601 instant whose disk content the image holds.
POINT_IN_TIME = 'snapdriver_point_in_time'
#: ``crash``, ``filesystem-quiesced`` or ``cold``.
CONSISTENCY = 'snapdriver_consistency'
#: Milliseconds the guest was stopped (managed-saved) for the snapshot.
GUEST_DOWNTIME_MS = 'snapdriver_guest_downtime_ms'

PROPERTIES = (STRATEGY, POINT_IN_TIME, CONSISTENCY, GUEST_DOWNTIME_MS)

CRASH = 'crash'
QUIESCED = 'filesystem-quiesced'
COLD = 'cold'
#: Value of the properties a strategy that hands the snapshot to Nova's own
#: code (``stock``) cannot know.
UNKNOWN = 'unknown'


def utc_iso(timestamp):
    """``time.time()`` value as UTC ISO 8601, microseconds included."""
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat()


def _wall(monotonic):
    return time.time() - (time.monotonic() - monotonic)


def point_in_time(run):
    """The wall-clock instant the image's content is of, or ``None``.

    * live strategies: what the strategy recorded in
      ``run.point_in_time`` (the backup job start for ``live-backup``, the
      end of the in-sync block copy for ``live-shallow-rebase``);
    * a guest managed-saved for a cold strategy: the end of the managed
      save (nothing writes the disk from then until the restore);
    * a guest that was already shut off: the start of the snapshot (its
      disk does not change).
    """
    if run.point_in_time is not None:
        return run.point_in_time
    if run.guest.saved_wall is not None:
        return run.guest.saved_wall
    if run.strategy.guest_state == base.GUEST_QUIET:
        return _wall(run.started)
    return None


def consistency(run):
    """``cold``, ``filesystem-quiesced`` or ``crash`` for ``run``."""
    if run.strategy.guest_state == base.GUEST_QUIET:
        return COLD
    if not run.request.is_active:
        # A live strategy on a shut-off guest (a third-party one may
        # accept it): nothing was writing.
        return COLD
    if ('frozen_seconds' in run.quiesce and
            run.quiesce.get('frozen_filesystems') != 0):
        # NOTE: an agent that froze no filesystem quiesced nothing.
        return QUIESCED
    return CRASH


def properties(run):
    """The four image properties of a finished ``run``.

    :param run: a :class:`snapdriver.runner.SnapshotRun`.
    :returns: a dict of strings (Glance stores property values as
        strings).
    """
    when = point_in_time(run)
    return {
        STRATEGY: run.strategy.name,
        POINT_IN_TIME: utc_iso(when) if when is not None else UNKNOWN,
        CONSISTENCY: consistency(run),
        GUEST_DOWNTIME_MS: str(int(round(run.guest.downtime * 1000))),
    }


def delegated(strategy_name):
    """The properties of a snapshot handed to Nova's own ``snapshot()``.

    Nova decides there between its live and cold paths and reports
    neither the instant nor the downtime: say so, rather than keep the
    values a server booted from a snapshot inherited.
    """
    return {STRATEGY: strategy_name, POINT_IN_TIME: UNKNOWN,
            CONSISTENCY: UNKNOWN, GUEST_DOWNTIME_MS: UNKNOWN}


def expected(request, strategy):
    """What :func:`properties` will say, before the snapshot: for plans.

    :returns: a dict of the four property names to a description.
    """
    from snapdriver import guest_state
    if strategy.delegates_to_driver:
        return delegated(strategy.name)
    if strategy.guest_state == base.GUEST_QUIET or not request.is_active:
        cons = COLD
    elif guest_state.can_quiesce(request) is None:
        cons = QUIESCED + ' (crash if the freeze fails)'
    else:
        cons = CRASH
    if strategy.guest_state == base.GUEST_LIVE and request.is_active:
        when = getattr(strategy, 'point_in_time_is',
                       'when the strategy captures the disk')
        down = '0'
    elif request.is_active:
        when = 'end of the managed save'
        down = 'managed save to restore'
    else:
        when = 'start of the snapshot (the guest is shut off)'
        down = '0'
    return {STRATEGY: strategy.name, POINT_IN_TIME: when,
            CONSISTENCY: cons, GUEST_DOWNTIME_MS: down}


def stamp(metadata, props):
    """Put ``props`` into the ``properties`` of an image ``metadata``."""
    metadata.setdefault('properties', {}).update(props)
    return metadata
