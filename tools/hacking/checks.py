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

"""Nova's hacking checks, re-exported for flake8's local plugins.

flake8 loads local plugins from a path; the checks themselves come from the
installed Nova (nova.hacking.checks), so they stay Nova's.
"""

from nova.hacking.checks import assert_equal_in  # noqa: F401
from nova.hacking.checks import assert_equal_type  # noqa: F401
from nova.hacking.checks import assert_raises_regexp  # noqa: F401
from nova.hacking.checks import assert_regexpmatches  # noqa: F401
from nova.hacking.checks import assert_true_instance  # noqa: F401
from nova.hacking.checks import assert_true_or_false_with_in  # noqa: F401
from nova.hacking.checks import capital_cfg_help  # noqa: F401
from nova.hacking.checks import check_assert_has_calls  # noqa: F401
from nova.hacking.checks import check_explicit_underscore_import  # noqa
from nova.hacking.checks import check_uuid4  # noqa: F401
from nova.hacking.checks import dict_constructor_with_list_copy  # noqa
from nova.hacking.checks import did_you_mean_tuple  # noqa: F401
from nova.hacking.checks import do_not_alias_mock_class  # noqa: F401
from nova.hacking.checks import do_not_use_mock_class_as_new_mock_value  # noqa
from nova.hacking.checks import no_assert_equal_true_false  # noqa: F401
from nova.hacking.checks import no_assert_true_false_is_not  # noqa: F401
from nova.hacking.checks import no_log_warn  # noqa: F401
from nova.hacking.checks import no_mutable_default_args  # noqa: F401
from nova.hacking.checks import no_os_popen  # noqa: F401
from nova.hacking.checks import no_redundant_import_alias  # noqa: F401
from nova.hacking.checks import no_translate_logs  # noqa: F401
from nova.hacking.checks import nonexistent_assertion_methods_and_attributes  # noqa
from nova.hacking.checks import return_followed_by_space  # noqa: F401
from nova.hacking.checks import use_jsonutils  # noqa: F401
from nova.hacking.checks import useless_assertion  # noqa: F401
from nova.hacking.checks import yield_followed_by_space  # noqa: F401
