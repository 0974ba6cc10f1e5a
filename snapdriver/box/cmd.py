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

"""``snapdriver box start|run|status|stop``."""

import time

from snapdriver.box import services
from snapdriver.cmd import common


def _say(out):
    t0 = time.monotonic()

    def say(line):
        out.write('[%6.1f s] %s\n' % (time.monotonic() - t0, line))
        out.flush()
    return say


def _howto(box, out):
    out.write('\nThe box is up. In another shell:\n\n'
              '    export OS_CLIENT_CONFIG_FILE=%(clouds)s\n'
              '    export OS_CLOUD=%(cloud)s\n'
              '    openstack server create --flavor %(flavor)s --image '
              'snapbox-writer --nic none --wait vm1\n'
              '    openstack server image create --wait --name snap1 vm1\n'
              '    openstack image save --file snap1.qcow2 snap1\n\n'
              'python-novaclient reads no clouds.yaml: ". %(openrc)s" '
              'first, then\n\n'
              '    nova image-create --poll vm1 snap2\n\n'
              'The clients are in %(bin)s (on PATH after ". %(openrc)s").\n'
              'Logs: %(logs)s\n' % {
                  'clouds': box.clouds_yaml, 'cloud': services.CLOUD_NAME,
                  'flavor': services.FLAVOR_NAME, 'openrc': box.openrc,
                  'bin': box.client_env()['PATH'].split(':')[0],
                  'logs': box.path('logs')})


def status(box, out):
    if not box.load():
        out.write('no box in %s\n' % box.dir)
        return common.EXIT_FAILED
    alive = set(box.running())
    out.write('box %s (%s)\n' % (box.dir, 'ready' if box.state.get('ready')
                                 else 'starting or failed'))
    for name, info in sorted(box.processes().items()):
        out.write('  %-16s pid %-7d %s\n' % (
            name, info['pid'], 'running' if name in alive else 'NOT RUNNING'))
    out.write('clouds.yaml: %s (OS_CLOUD=%s)\nopenrc: %s\n' % (
        box.clouds_yaml, services.CLOUD_NAME, box.openrc))
    return common.EXIT_OK if alive == set(box.processes()) else \
        common.EXIT_FAILED


def run(args, out):
    say = _say(out)
    box = services.Box(args.box_dir, say=say)
    if args.action == 'status':
        return status(box, out)
    if args.action == 'stop':
        if not box.load():
            out.write('no box in %s\n' % box.dir)
            return common.EXIT_OK
        for what in box.stop():
            say('removed %s' % what)
        return common.EXIT_OK
    reason = services.unavailable_reason()
    if reason:
        raise common.CliError(reason)
    say('starting a box in %s' % box.dir)
    try:
        seconds = box.start(strategies=args.strategies)
    except services.BoxError as e:
        raise common.CliError(str(e))
    say('box up in %.1f s' % seconds)
    _howto(box, out)
    if args.action == 'start':
        out.write('"snapdriver box stop --box-dir %s" removes it.\n'
                  % box.dir)
        return common.EXIT_OK
    out.write('Ctrl-C stops it and removes everything.\n')
    try:
        while True:
            time.sleep(3600)
    except BaseException:
        say('stopping')
        for what in box.stop():
            say('removed %s' % what)
        raise
