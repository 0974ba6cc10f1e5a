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

"""Record the box's nova-compute service before it first starts.

A new nova-compute refuses to start when its hypervisor already runs
domains ("My hypervisor has existing instances, but I appear to be a new
service in this database", ``ComputeManager._sanity_check_new_host``): a
guard against a compute host pointed at the wrong database. The box shares
the host's libvirtd with whatever else runs domains there (other test
runs), which are not Nova's instances; the guard only runs when the
service has no record yet, so the box writes the record first, as the
first start would have, and the node identity file (``compute_id`` in
``state_path``) that an existing service must have. Run as
``python -m snapdriver.box.service_record --config-file nova.conf`` (a
configuration with ``[database]``).
"""

import sys

from nova import conf
from nova import config
from nova import context
from nova import objects
import nova.virt.node
from oslo_utils import uuidutils

CONF = conf.CONF


def main(argv=None):
    argv = sys.argv if argv is None else argv
    config.parse_args(argv)
    objects.register_all()
    ctxt = context.get_admin_context()
    # The node identity a first start would write too (an existing
    # service without one refuses to start).
    if nova.virt.node.read_local_node_uuid() is None:
        nova.virt.node.write_local_node_uuid(uuidutils.generate_uuid())
    if objects.Service.get_by_host_and_binary(ctxt, CONF.host,
                                              'nova-compute'):
        return 0
    objects.Service(ctxt, host=CONF.host, binary='nova-compute',
                    topic='compute', report_count=0).create()
    return 0


if __name__ == '__main__':
    sys.exit(main())
