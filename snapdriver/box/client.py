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

"""Drive the box as a person does: the ``openstack`` and ``nova`` commands.

Used by the demo and the scenario tests. Every action a person would type
is a subprocess of the real client with the box's ``clouds.yaml``; only
what a person would look at on the host is read directly: the guest's
serial console (the writer's progress), its disk through the guest agent
(``guest-exec`` inside the guest), the libvirt domain and the snapshots
directory.
"""

import base64
import hashlib
import json
import os
import subprocess
import time

from snapdriver.box import guest_images
from snapdriver.box import services
from snapdriver.tests.functional import writer_guest


class ClientError(Exception):
    """A client command failed; ``returncode`` and ``output`` say how."""

    def __init__(self, cmd, returncode, output):
        super().__init__('%s failed (exit %d): %s' % (
            ' '.join(cmd), returncode, output.strip()[-2000:]))
        self.cmd = cmd
        self.returncode = returncode
        self.output = output


class BoxClient(object):
    """The box seen from a second shell."""

    def __init__(self, box):
        self.box = box
        self.env = box.client_env()

    # -- the clients ---------------------------------------------------

    def run(self, cmd, timeout=600, check=True, openrc=False):
        """Run a client command; return its stdout.

        :param openrc: use the variables of the box's openrc (novaclient
            reads no clouds.yaml) instead of ``OS_CLOUD``.
        """
        env = self.env
        if openrc:
            env = dict(env)
            del env['OS_CLOUD']
            with open(self.box.openrc) as f:
                for line in f:
                    if line.startswith('export OS_'):
                        key, value = line[len('export '):].strip().split(
                            '=', 1)
                        env[key] = value
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClientError(cmd, proc.returncode,
                              proc.stderr + proc.stdout)
        return proc.stdout if check else proc

    def osc(self, *args, **kwargs):
        """``openstack ARGS -f json``, decoded."""
        out = self.run(['openstack'] + list(args) + ['-f', 'json'],
                       **kwargs)
        return json.loads(out) if out.strip() else None

    # -- servers -------------------------------------------------------

    def boot(self, name, image=guest_images.ROOT_IMAGE, wait=True,
             flavor=None):
        args = ['server', 'create', '--flavor',
                flavor or self.box.state['flavor'],
                '--image', image, '--nic', 'none']
        if wait:
            args.append('--wait')
        try:
            return self.osc(*(args + [name]))
        except ClientError as e:
            # "Error creating server" says nothing: add the fault.
            proc = self.run(['openstack', 'server', 'show', name, '-c',
                             'fault', '-f', 'value'], check=False)
            raise ClientError(e.cmd, e.returncode,
                              e.output + ' fault: ' + proc.stdout)

    def server(self, server_id):
        return self.osc('server', 'show', server_id)

    def wait_for_server(self, server_id, status, timeout=300):
        """Wait for ``status`` with no task; return the server."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.server(server_id)
            task = server.get('OS-EXT-STS:task_state')
            if server['status'] == status and task is None:
                return server
            if server['status'] == 'ERROR' and status != 'ERROR':
                raise AssertionError('server %s went to ERROR: %s' % (
                    server_id, server.get('fault')))
            if time.monotonic() > deadline:
                raise AssertionError(
                    'server %s is %s (task %s), not %s, after %d s' % (
                        server_id, server['status'], task, status, timeout))
            time.sleep(0.5)

    def delete_server(self, server_id, wait=True):
        args = ['openstack', 'server', 'delete']
        if wait:
            args.append('--wait')
        self.run(args + [server_id])

    def domain_name(self, server):
        return server['OS-EXT-SRV-ATTR:instance_name']

    def instance_dir(self, server):
        return os.path.join(self.box.instances_path, server['id'])

    def strategy_used(self, server_id):
        """The strategy nova-compute logged last for this server, or None.

        The driver logs "Snapshot strategy NAME chosen for ..." with the
        instance at every snapshot.
        """
        try:
            with open(self.box.log('nova-compute'), errors='replace') as f:
                lines = [ln for ln in f if 'Snapshot strategy ' in ln and
                         ' chosen for ' in ln and server_id in ln]
        except OSError:
            return None
        if not lines:
            return None
        return lines[-1].split('Snapshot strategy ', 1)[1].split(' ', 1)[0]

    # -- images --------------------------------------------------------

    def image_create(self, server_id, name, wait=True):
        """``openstack server image create [--wait]``; return the image."""
        args = ['server', 'image', 'create', '--name', name]
        if wait:
            args.append('--wait')
        return self.osc(*(args + [server_id]))

    def image(self, image_id):
        return self.osc('image', 'show', image_id)

    def image_save(self, image_id, path):
        self.run(['openstack', 'image', 'save', '--file', path, image_id])
        return path

    def make_reader(self, image_id):
        """Make a snapshot boot without its writer (see guest_images)."""
        self.run(['openstack', 'image', 'set', '--property',
                  'os_command_line=%s' % guest_images.reader_cmdline(
                      self.box.state['virt_type']), image_id])

    # -- the guest -----------------------------------------------------

    def console_seq(self, server):
        """The writer's last reported sequence number (console log)."""
        path = os.path.join(self.instance_dir(server), 'console.log')
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            return 0
        found = writer_guest._seq_regex('writer').findall(data)
        return int(found[-1]) if found else 0

    def boot_id(self, server):
        """The guest kernel's boot id: another one after every boot.

        A guest restored from a (managed) save keeps its boot id.
        """
        return self.guest_exec(
            server, 'cat /proc/sys/kernel/random/boot_id').strip()

    def writer_starts(self, server):
        """How many times the writer started (once per guest boot)."""
        path = os.path.join(self.instance_dir(server), 'console.log')
        with open(path, 'rb') as f:
            return f.read().count(b'writer start run=')

    def wait_for_seq(self, server, min_seq, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            seq = self.console_seq(server)
            if seq >= min_seq:
                return seq
            if time.monotonic() > deadline:
                raise AssertionError('writer of %s at seq %d < %d after %d '
                                     's' % (server['id'], seq, min_seq,
                                            timeout))
            time.sleep(0.2)

    def _agent(self, server, command, arguments=None, timeout=5):
        """Send one command to the guest agent; return its ``return``."""
        import libvirt
        import libvirt_qemu

        conn = libvirt.open(services.LIBVIRT_URI)
        try:
            dom = conn.lookupByName(self.domain_name(server))
            cmd = {'execute': command}
            if arguments:
                cmd['arguments'] = arguments
            out = libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd),
                                                timeout, 0)
        finally:
            conn.close()
        return json.loads(out)['return']

    def agent_command(self, server, command):
        return self._agent(server, command)

    def guest_spawn(self, server, shell):
        """Start a shell command in the guest; do not wait for it."""
        return self._agent(server, 'guest-exec', {
            'path': '/bin/sh', 'arg': ['-c', shell]})['pid']

    def wait_agent_gone(self, server, timeout=30):
        """Wait until the guest agent no longer answers."""
        import libvirt

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._agent(server, 'guest-ping', timeout=2)
            except libvirt.libvirtError:
                return
            time.sleep(0.5)
        raise AssertionError('the guest agent of %s still answers after '
                             '%d s' % (server['id'], timeout))

    def guest_exec(self, server, shell, timeout=60):
        """Run a shell command in the guest (qemu-ga guest-exec)."""
        import libvirt

        deadline = time.monotonic() + timeout
        args = {'path': '/bin/sh', 'arg': ['-c', shell],
                'capture-output': True}
        while True:
            try:
                pid = self._agent(server, 'guest-exec', args)['pid']
                break
            except libvirt.libvirtError:
                # The agent is not up yet (the clone is booting).
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        status = {'pid': pid}
        while True:
            ret = self._agent(server, 'guest-exec-status', status)
            if ret.get('exited'):
                break
            if time.monotonic() > deadline:
                raise AssertionError('guest command %r still running '
                                     'after %d s' % (shell, timeout))
            time.sleep(0.2)
        if ret.get('exitcode'):
            raise AssertionError('guest command %r exited with %s' % (
                shell, ret.get('exitcode')))
        return base64.b64decode(ret.get('out-data', '')).decode()

    def read_back(self, server, n, run_id):
        """Check, inside the guest, that its disk holds the blocks 1..n.

        The guest hashes its first ``n`` blocks of ``/dev/vda`` and the
        block after them; the host computes what the writer run
        ``run_id`` wrote (:func:`writer_guest.expected_block`). Returns
        True, or raises AssertionError.
        """
        out = self.guest_exec(
            server, 'dd if=/dev/vda bs=4096 count=%d 2>/dev/null | '
            'sha256sum; dd if=/dev/vda bs=4096 skip=%d count=1 '
            '2>/dev/null | sha256sum' % (n, n))
        got = [line.split()[0] for line in out.splitlines() if line.strip()]
        want = hashlib.sha256()
        for seq in range(1, n + 1):
            want.update(writer_guest.expected_block(seq, run_id))
        empty = hashlib.sha256(bytes(writer_guest.BLOCK_SIZE)).hexdigest()
        if got != [want.hexdigest(), empty]:
            raise AssertionError(
                'the clone %s does not hold exactly the writer blocks '
                '1..%d of run %016x: guest hashes %s, expected %s' % (
                    server['id'], n, run_id, got, [want.hexdigest(),
                                                   empty]))
        return True
