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

"""The test guest of tools/build-test-guest.sh as Glance images.

Three images, as a classic AMI-style Linux image: the kernel (``aki``),
the initramfs (``ari``) and an empty root disk (qcow2) whose properties
name the other two (``kernel_id``, ``ramdisk_id``), the kernel command
line (``os_command_line``) and the guest agent (``hw_qemu_guest_agent``).
Nova boots it with direct kernel boot; the initramfs's writer writes its
verifiable sequence (see
:mod:`snapdriver.tests.functional.writer_guest`) to ``vda``, the root
disk Nova made from the image: a qcow2 overlay on the raw ``_base`` file.

A snapshot of such a server inherits the three properties. A clone meant
to *read* the data must not run the writer: :data:`READER_CMDLINE` names
no writer device, and is set on the snapshot image before the clone boots.
"""

import os
import subprocess
import tempfile

from snapdriver.tests.functional import writer_guest

#: Root disk of the image: its virtual size (the box's flavor has disk 0:
#: the root disk keeps the image's size, and a check of a snapshot reads
#: no more than that) and the writer's rate in 4 KiB blocks a second. 50/s
#: fills 256 MiB in ~22 minutes, longer than a demo's source server lives.
ROOT_DISK_MIB = 256
WRITER_RATE = 50
ROOT_IMAGE = 'snapbox-writer'


def cmdline(virt_type, writer_dev='/dev/vda', rate=WRITER_RATE):
    args = ['console=ttyS0', 'loglevel=4', 'panic=-1',
            'snapguest.writer_dev=%s' % writer_dev,
            'snapguest.rate=%d' % rate,
            'snapguest.fs_dev=/dev/vdb']
    if virt_type == 'qemu':
        args.append('mitigations=off')
    return ' '.join(args)


def reader_cmdline(virt_type):
    """The command line of a clone: no writer (no such device)."""
    return cmdline(virt_type, writer_dev='/dev/vdz')


def _upload(sess, name, path, disk_format, container_format, props):
    ep = {'service_type': 'image'}
    body = dict(props, name=name, disk_format=disk_format,
                container_format=container_format, visibility='public')
    image = sess.post('/v2/images', json=body, endpoint_filter=ep).json()
    with open(path, 'rb') as f:
        sess.put('/v2/images/%s/file' % image['id'], data=f,
                 endpoint_filter=ep,
                 headers={'Content-Type': 'application/octet-stream'})
    return image['id']


def _find_build_script():
    """tools/build-test-guest.sh of the source checkout.

    NOTE: tox installs snapdriver as a package, without tools/: the
    script is looked for beside the package (a checkout on PYTHONPATH),
    then in the working directory (tox runs commands in the checkout).
    """
    candidates = [writer_guest.BUILD_SCRIPT,
                  os.path.join(os.getcwd(), 'tools', 'build-test-guest.sh')]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise RuntimeError('tools/build-test-guest.sh not found (looked at %s): '
                       'run from a source checkout, as tox -e demo does'
                       % ', '.join(candidates))


def register(box):
    """Build (or reuse) the test guest and register it; return the ids."""
    writer_guest.BUILD_SCRIPT = _find_build_script()
    kernel, initrd = writer_guest.build_guest()
    sess = box.session()
    ids = {
        'kernel': _upload(sess, 'snapbox-kernel', kernel, 'aki', 'aki', {}),
        'ramdisk': _upload(sess, 'snapbox-initramfs', initrd, 'ari', 'ari',
                           {}),
    }
    ids['root'] = register_root(box, ROOT_IMAGE, ids)
    return ids


def register_root(box, name, ids=None, disk=None, **properties):
    """Register another root disk image of the test guest.

    :param ids: the kernel and ramdisk ids (default: the box's).
    :param disk: a qcow2 file to upload as the root disk (default: an
        empty one of ``ROOT_DISK_MIB``).
    :param properties: image properties added to (or replacing) those
        of the box's root image, e.g. ``os_require_quiesce='yes'``.
    :returns: the image id.
    """
    ids = ids or box.state['images']
    props = {'kernel_id': ids['kernel'], 'ramdisk_id': ids['ramdisk'],
             'os_command_line': cmdline(box.state['virt_type']),
             'hw_qemu_guest_agent': 'yes'}
    props.update(properties)
    if disk is not None:
        return _upload(box.session(), name, disk, 'qcow2', 'bare', props)
    with tempfile.TemporaryDirectory(dir=box.dir) as tmp:
        disk = os.path.join(tmp, 'root.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk,
                        '%dM' % ROOT_DISK_MIB], check=True)
        return _upload(box.session(), name, disk, 'qcow2', 'bare', props)
