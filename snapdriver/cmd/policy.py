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

"""The flavor/image policy and the provenance in the ``snapdriver`` command.

The command talks to libvirt, not to Nova's database or API. What it can
know of an instance's policy:

* the flavor's ``snapdriver:strategies``: Nova (2024.1 and later) writes
  the flavor's extra specs into the domain XML
  (``<nova:flavor><nova:extraSpecs><nova:extraSpec name=...>``), so the
  command reads it there; ``--flavor-strategies`` overrides it (a domain
  defined by an older Nova, or a "what if");
* the image's ``snapdriver_strategies``: Nova keeps only the image
  properties it has fields for in the domain XML, so it is given with
  ``--image-strategies``.

A Nova instance uuid is its domain's UUID: ``snapdriver plan UUID`` works
for an instance on this host.
"""

from xml.etree import ElementTree

from nova.virt.libvirt import config as vconfig

from snapdriver import policy
from snapdriver import provenance

_FLAVOR_SPEC_XPATH = ('./metadata/{ns}instance/{ns}flavor/{ns}extraSpecs/'
                      '{ns}extraSpec').format(ns='{%s}' % vconfig.NOVA_NS)


def add_arguments(parser):
    """Add ``--flavor-strategies`` and ``--image-strategies``."""
    parser.add_argument(
        '--flavor-strategies', metavar='LIST',
        help='the flavor extra spec snapdriver:strategies to apply '
             '(comma-separated; default: the one Nova wrote into the '
             'domain XML, if any).')
    parser.add_argument(
        '--image-strategies', metavar='LIST',
        help='the image property snapdriver_strategies to apply '
             '(comma-separated; Nova does not write it into the domain '
             'XML).')


def flavor_spec_from_xml(xml):
    """The flavor's ``snapdriver:strategies`` in a Nova domain XML, or None.
    """
    root = ElementTree.fromstring(xml)
    for node in root.findall(_FLAVOR_SPEC_XPATH):
        if node.get('name') == policy.FLAVOR_SPEC:
            return node.text or ''
    return None


def resolve(registry, guest, args):
    """Apply the policy to ``registry``.

    :returns: ``(narrowed registry, policy.Policy, where the flavor list
        came from or None)``.
    :raises: :class:`snapdriver.exception.SnapshotStrategyNotAllowed`
    """
    flavor_value = args.flavor_strategies
    flavor_from = '--flavor-strategies' if flavor_value is not None else None
    if flavor_value is None:
        flavor_value = flavor_spec_from_xml(guest.get_xml_desc())
        if flavor_value is not None:
            flavor_from = 'the <nova:flavor> extra specs of the domain XML'
    chosen = policy.resolve(registry.names(), policy.parse(flavor_value),
                            policy.parse(args.image_strategies),
                            label=guest.uuid)
    return registry.narrowed(chosen.names), chosen, flavor_from


def describe(chosen, flavor_from, out):
    """Write the effective list and why."""
    out.write('policy:   %s\n' % chosen.explain())
    if flavor_from:
        out.write('          (flavor list from %s)\n' % flavor_from)
    for name in chosen.configured:
        if name in chosen.names:
            continue
        if chosen.flavor is not None and name not in chosen.flavor:
            why = 'the flavor'
        else:
            why = 'the image'
        out.write('          %s: left out by %s\n' % (name, why))


def write_provenance(props, out, title='provenance'):
    """Write the four provenance properties, as the image will carry them.
    """
    out.write('%s (image properties):\n' % title)
    for key in provenance.PROPERTIES:
        out.write('  %-29s %s\n' % (key + ':', props[key]))
