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

"""The registry of snapshot strategies.

Strategies are found through stevedore in the entry point namespace
:data:`NAMESPACE`; ``[snapdriver] strategies`` orders them. The registry is
loaded once, when nova-compute starts (``init_host``), and an unknown name
stops the service with the list of installed names.
"""

import copy

from oslo_log import log as logging
import stevedore

from snapdriver import conf
from snapdriver import exception

LOG = logging.getLogger(__name__)
CONF = conf.CONF

NAMESPACE = 'snapdriver.snapshot_strategies'


def available_names():
    """Return the sorted names of every installed strategy."""
    return sorted(stevedore.ExtensionManager(NAMESPACE).names())


def _make_strategy(ext):
    strategy = ext.plugin()
    strategy.name = ext.name
    return strategy


class Registry(object):
    """The configured strategies, in order, and the rule that picks one."""

    def __init__(self, extension_manager):
        self._manager = extension_manager
        self.strategies = [_make_strategy(ext) for ext in extension_manager]

    @classmethod
    def load(cls, names=None):
        """Load the strategies named in ``[snapdriver] strategies``.

        :param names: override the option (the CLI's ``--strategy``).
        :raises: :class:`exception.NoSnapshotStrategyConfigured` for an
            empty list, :class:`exception.UnknownSnapshotStrategy` for a
            name no installed package provides.
        """
        if names is None:
            names = CONF.snapdriver.strategies
        names = [n.strip() for n in names or [] if n and n.strip()]
        if not names:
            raise exception.NoSnapshotStrategyConfigured(
                available=', '.join(available_names()))
        missing = []

        def _missing(names_missing):
            missing.extend(names_missing)

        manager = stevedore.NamedExtensionManager(
            NAMESPACE, names, name_order=True,
            on_missing_entrypoints_callback=_missing,
            on_load_failure_callback=_load_failed,
            invoke_on_load=False)
        if missing:
            raise exception.UnknownSnapshotStrategy(
                unknown=', '.join(sorted(missing)),
                available=', '.join(available_names()))
        registry = cls(manager)
        LOG.info('Snapshot strategies, in order of preference: %s',
                 ', '.join(registry.names()))
        return registry

    def names(self):
        return [s.name for s in self.strategies]

    def get(self, name):
        for strategy in self.strategies:
            if strategy.name == name:
                return strategy
        raise exception.UnknownSnapshotStrategy(
            unknown=name, available=', '.join(self.names()))

    def narrowed(self, names):
        """Return a registry of the strategies ``names``, in that order.

        The strategies are the ones already loaded (no entry point is
        read again); used to apply a per-flavor or per-image policy.

        :raises: :class:`exception.UnknownSnapshotStrategy` for a name
            this registry does not hold.
        """
        registry = copy.copy(self)
        registry.strategies = [self.get(name) for name in names]
        return registry

    def plan(self, request):
        """Return ``(strategy, skipped)`` for ``request``.

        :returns: the first strategy that applies (or ``None``) and the
            list of ``(name, reason)`` of the strategies before it that do
            not apply.
        """
        skipped = []
        for strategy in self.strategies:
            reason = strategy.unsupported_reason(request)
            if reason is None:
                return strategy, skipped
            skipped.append((strategy.name, reason))
        return None, skipped

    def choose(self, request):
        """Pick the strategy for ``request`` and log why.

        :raises: :class:`exception.NoApplicableSnapshotStrategy` naming
            every strategy's reason, before anything touches the guest.
        """
        strategy, skipped = self.plan(request)
        for name, reason in skipped:
            LOG.info('Snapshot strategy %(name)s skipped: %(reason)s',
                     {'name': name, 'reason': reason},
                     instance=request.instance)
        if strategy is None:
            reasons = '; '.join('%s: %s' % s for s in skipped)
            LOG.error('No snapshot strategy applies: %s', reasons,
                      instance=request.instance)
            raise exception.NoApplicableSnapshotStrategy(
                instance=request.label, reasons=reasons)
        LOG.info('Snapshot strategy %(name)s chosen for %(state)s guest '
                 '(%(fmt)s disk, %(out)s output)',
                 {'name': strategy.name, 'state': request.power_state_name,
                  'fmt': request.source_format, 'out': request.image_format},
                 instance=request.instance)
        return strategy, skipped


def _load_failed(manager, entrypoint, exc):
    LOG.error('Could not load snapshot strategy %(ep)s: %(exc)s',
              {'ep': entrypoint, 'exc': exc})
    raise exc
