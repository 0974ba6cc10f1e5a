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

"""Per-flavor and per-image strategy policy.

Three lists decide which strategies may snapshot an instance, and in which
order they are tried:

1. ``[snapdriver] strategies`` (the operator, per host): the allowed set
   and the default order.
2. The flavor extra spec :data:`FLAVOR_SPEC` (the operator, per flavor):
   narrows the host list and may reorder it.
3. The image property :data:`IMAGE_PROPERTY` (the image owner): narrows
   what the flavor leaves; it can neither add a name nor change the order.

A name a list may not use is refused before the guest is touched, with
:class:`snapdriver.exception.SnapshotStrategyNotAllowed`.
"""

import dataclasses
import typing as ty

from nova import exception as nova_exception
from oslo_log import log as logging

from snapdriver import exception

LOG = logging.getLogger(__name__)

#: Flavor extra spec, validated by nova-api (:mod:`snapdriver.extra_specs`).
FLAVOR_SPEC = 'snapdriver:strategies'
#: Image property. Nova keeps image properties it has no field for only in
#: the instance's system metadata, as ``image_<property>``.
IMAGE_PROPERTY = 'snapdriver_strategies'


def parse(value):
    """Split a comma-separated list of strategy names.

    :returns: the names, stripped, empty entries dropped; ``None`` when
        ``value`` is ``None``.
    """
    if value is None:
        return None
    return [n.strip() for n in value.split(',') if n.strip()]


@dataclasses.dataclass(frozen=True)
class Policy:
    """The strategies one snapshot may use, and where they came from."""

    #: The effective names, in the order they are tried.
    names: ty.List[str]
    #: ``[snapdriver] strategies``.
    configured: ty.List[str]
    #: The flavor's list, or ``None`` when the flavor sets none.
    flavor: ty.Optional[ty.List[str]] = None
    #: The image's list, or ``None`` when the image sets none.
    image: ty.Optional[ty.List[str]] = None

    @property
    def source(self):
        """Which list is in effect: 'config', 'flavor' or 'image'."""
        if self.image is not None:
            return 'image'
        if self.flavor is not None:
            return 'flavor'
        return 'config'

    def explain(self):
        """One sentence: the effective list and why."""
        parts = ['[snapdriver] strategies = %s' % ', '.join(self.configured)]
        if self.flavor is not None:
            parts.append('flavor %s = %s' % (FLAVOR_SPEC,
                                             ', '.join(self.flavor)))
        if self.image is not None:
            parts.append('image %s = %s' % (IMAGE_PROPERTY,
                                            ', '.join(self.image)))
        return 'effective strategies %s (from %s)' % (
            ', '.join(self.names), '; then '.join(parts))


def _check(names, allowed, source, label):
    if not names:
        raise exception.SnapshotStrategyNotAllowed(
            names='(none)', source=source, instance=label,
            allowed=', '.join(allowed))
    refused = [n for n in names if n not in allowed]
    if refused:
        raise exception.SnapshotStrategyNotAllowed(
            names=', '.join(refused), source=source, instance=label,
            allowed=', '.join(allowed))


def resolve(configured, flavor=None, image=None, label=None):
    """Apply the flavor's and the image's lists to the host's.

    :param configured: ``[snapdriver] strategies``, in order.
    :param flavor: the flavor's list (see :func:`parse`), or ``None``.
    :param image: the image's list, or ``None``.
    :param label: how errors name the instance.
    :returns: a :class:`Policy`.
    :raises: :class:`exception.SnapshotStrategyNotAllowed` when the flavor
        names a strategy outside ``configured``, or the image one outside
        what the flavor leaves (or either list is empty).
    """
    configured = list(configured)
    names = configured
    if flavor is not None:
        _check(flavor, names, 'flavor extra spec %s' % FLAVOR_SPEC, label)
        # The operator's flavor may reorder: its order wins.
        names = list(dict.fromkeys(flavor))
    if image is not None:
        _check(image, names, 'image property %s' % IMAGE_PROPERTY, label)
        # The image only narrows: the order stays the flavor's (or the
        # host's), so a user cannot put a strategy first that the
        # operator ranked later.
        wanted = set(image)
        names = [n for n in names if n in wanted]
    return Policy(names=names, configured=configured, flavor=flavor,
                  image=image)


def flavor_strategies(instance):
    """The instance flavor's :data:`FLAVOR_SPEC` list, or ``None``."""
    flavor = _field(instance, 'flavor')
    if flavor is None:
        return None
    return _parse_str((flavor.extra_specs or {}).get(FLAVOR_SPEC))


def image_strategies(instance):
    """The instance image's :data:`IMAGE_PROPERTY` list, or ``None``.

    ``ImageMetaProps`` drops properties Nova has no field for, so this
    reads the copy Nova keeps in the system metadata
    (``image_snapdriver_strategies``), which is also what a snapshot of the
    instance inherits.
    """
    sysmeta = _field(instance, 'system_metadata') or {}
    return _parse_str(sysmeta.get('image_%s' % IMAGE_PROPERTY))


def _field(instance, name):
    # NOTE: inside nova-compute an unset field is lazy-loaded through the
    # conductor; an instance without a context (tests, tools) cannot load
    # it and has no list.
    try:
        return getattr(instance, name, None)
    except nova_exception.OrphanedObjectError:
        return None


def _parse_str(value):
    # Nova stores extra specs and system metadata as strings; anything
    # else (a stand-in instance) sets no list.
    return parse(value) if isinstance(value, str) else None


def for_instance(instance, configured):
    """Resolve the policy of a Nova instance and log it.

    :raises: :class:`exception.SnapshotStrategyNotAllowed`
    """
    policy = resolve(configured, flavor_strategies(instance),
                     image_strategies(instance), label=instance.uuid)
    if policy.source == 'config':
        LOG.debug('Snapshot policy: %s', policy.explain(), instance=instance)
    else:
        LOG.info('Snapshot policy: %s', policy.explain(), instance=instance)
    return policy
