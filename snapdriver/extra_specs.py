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

"""Validators for ``snapdriver`` namespaced flavor extra specs.

nova-api loads them from the ``nova.api.extra_spec_validators`` entry point
namespace, as it loads its own (``nova/api/validation/extra_specs/*.py``).
With microversion 2.86 or later a flavor extra spec is then checked when it
is set: an unknown strategy name, or an unknown ``snapdriver:`` key, is a
400. Install snapdriver where nova-api runs for this check; the compute
host checks the list again, against its own ``[snapdriver] strategies``,
before each snapshot.
"""

import dataclasses
import re

from nova.api.validation.extra_specs import base
from nova import exception

from snapdriver import policy
from snapdriver import strategies

#: A strategy name: the entry point names are kebab-case.
_NAME = r'[a-z0-9][a-z0-9_.-]*'


def _pattern(names):
    """A comma-separated list of ``names``, spaces allowed around commas."""
    alternatives = '|'.join(re.escape(n) for n in names) or _NAME
    item = r'\s*(?:%s)\s*' % alternatives
    return r'%s(?:,%s)*' % (item, item)


@dataclasses.dataclass
class StrategyListValidator(base.ExtraSpecValidator):
    """A list of installed strategy names, with a message that lists them.

    Nova's base validator answers a failed pattern with the regular
    expression; an operator needs the names.
    """

    def _validate_str(self, value):
        names = policy.parse(value)
        installed = self.value.get('installed', [])
        unknown = [n for n in names if n not in installed]
        if not names or unknown:
            raise exception.ValidationError(
                "Validation failed; %s '%s' names %s. Installed snapshot "
                "strategies: %s. Give a comma-separated list of them, in "
                "order of preference." % (
                    self.name, value,
                    'unknown strategies %s' % ', '.join(unknown)
                    if unknown else 'no strategy',
                    ', '.join(installed)))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise exception.ValidationError(
                "Validation failed; %s '%s' names %s more than once." % (
                    self.name, value, ', '.join(duplicates)))


def register():
    """Return the validators; called by nova-api through stevedore."""
    installed = strategies.available_names()
    return [
        StrategyListValidator(
            name=policy.FLAVOR_SPEC,
            description=(
                'Snapshot strategies an instance of this flavor may use, in '
                'order of preference (comma-separated). Narrows and '
                'reorders the compute host\'s ``[snapdriver] strategies``; '
                'the image property ``snapdriver_strategies`` may narrow '
                'it further. Installed strategies: %s.'
                % ', '.join(installed)),
            value={
                'type': str,
                'pattern': _pattern(installed),
                'installed': installed,
            },
        ),
    ]
