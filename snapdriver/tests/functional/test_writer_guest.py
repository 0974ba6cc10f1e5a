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

"""The writer guest itself, on the real host (libvirt + QEMU)."""

import os
import subprocess
import time

import fixtures
from oslotest import base
from testtools import content
from testtools import content_type

from snapdriver.tests.functional import writer_guest


def _write_image(path, blocks, size_blocks):
    with open(path, 'wb') as f:
        f.truncate(size_blocks * writer_guest.BLOCK_SIZE)
        for index, block in blocks:
            f.seek(index * writer_guest.BLOCK_SIZE)
            f.write(block)


class TestVerifyPrefix(base.BaseTestCase):
    """verify_prefix on synthetic images (no guest needed)."""

    RUN = 0x1234abcd5678ef01

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'disk.raw')

    def _blocks(self, seqs, run=RUN):
        return [(s - 1, writer_guest.expected_block(s, run)) for s in seqs]

    def test_empty(self):
        _write_image(self.path, [], 16)
        self.assertEqual(0, writer_guest.verify_prefix(self.path, 'raw'))

    def test_prefix(self):
        _write_image(self.path, self._blocks(range(1, 6)), 16)
        self.assertEqual(5, writer_guest.verify_prefix(self.path, 'raw'))

    def test_full(self):
        _write_image(self.path, self._blocks(range(1, 17)), 16)
        self.assertEqual(16, writer_guest.verify_prefix(self.path, 'raw'))

    def test_qcow2_is_converted(self):
        _write_image(self.path, self._blocks(range(1, 4)), 16)
        qcow2 = os.path.join(self.dir, 'disk.qcow2')
        subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                        self.path, qcow2], check=True)
        self.assertEqual(3, writer_guest.verify_prefix(qcow2, 'qcow2'))

    def test_hole(self):
        _write_image(self.path, self._blocks([1, 2, 4]), 16)
        e = self.assertRaises(AssertionError, writer_guest.verify_prefix,
                              self.path, 'raw')
        self.assertIn('not a prefix', str(e))

    def test_bad_checksum(self):
        blocks = self._blocks([1, 2, 3])
        torn = bytearray(blocks[1][1])
        torn[2048:] = bytes(2048)
        blocks[1] = (1, bytes(torn))
        _write_image(self.path, blocks, 16)
        e = self.assertRaises(AssertionError, writer_guest.verify_prefix,
                              self.path, 'raw')
        self.assertIn('bad checksum', str(e))

    def test_wrong_place(self):
        blocks = self._blocks([1, 2])
        blocks.append((2, writer_guest.expected_block(7, self.RUN)))
        _write_image(self.path, blocks, 16)
        e = self.assertRaises(AssertionError, writer_guest.verify_prefix,
                              self.path, 'raw')
        self.assertIn('holds seq 7, expected 3', str(e))

    def test_mixed_runs(self):
        blocks = self._blocks([1, 2]) + self._blocks([3], run=self.RUN + 1)
        _write_image(self.path, blocks, 16)
        e = self.assertRaises(AssertionError, writer_guest.verify_prefix,
                              self.path, 'raw')
        self.assertIn('writer restarted', str(e))

    def test_garbage(self):
        _write_image(self.path, [(0, b'\x01' * writer_guest.BLOCK_SIZE)], 4)
        e = self.assertRaises(AssertionError, writer_guest.verify_prefix,
                              self.path, 'raw')
        self.assertIn('neither empty nor a writer block', str(e))


class WriterGuestTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        reason = writer_guest.guest_unavailable_reason()
        if reason:
            self.skipTest(reason)

    def _guest(self, **kwargs):
        guest = self.useFixture(writer_guest.WriterGuest(**kwargs))
        self.addDetail('console', content.Content(
            content_type.UTF8_TEXT,
            lambda: [guest.console_text().encode('utf-8')]))
        return guest


class TestVerifyPointInTime(base.BaseTestCase):
    """verify_point_in_time on synthetic scattered images."""

    RUN = 0x0fedcba987654321
    N = 64

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'disk.raw')

    def state_after(self, cutoff):
        """{block: seq} after writes 1..cutoff of writer -x."""
        blocks = {}
        for seq in range(1, cutoff + 1):
            blocks[writer_guest.scattered_block(seq, self.RUN, self.N)] = seq
        return blocks

    def write(self, blocks):
        _write_image(self.path, [
            (index, writer_guest.expected_block(seq, self.RUN))
            for index, seq in blocks.items()], self.N)

    def test_one_instant_passes(self):
        self.write(self.state_after(200))
        self.assertEqual((200, self.RUN), writer_guest.verify_point_in_time(
            self.path, 'raw'))

    def test_old_block_beside_newer_ones_fails(self):
        # What a front-to-back copy of a disk being rewritten gives: one
        # block copied before its rewrite, the others after theirs.
        blocks = self.state_after(200)
        older = self.state_after(150)
        stale = next(i for i in blocks if older.get(i) != blocks[i] and
                     i in older)
        blocks[stale] = older[stale]
        self.write(blocks)
        e = self.assertRaises(AssertionError,
                              writer_guest.verify_point_in_time,
                              self.path, 'raw')
        self.assertIn('block %d must hold seq %d' % (
            stale, self.state_after(200)[stale]), str(e))

    def test_missing_block_fails(self):
        blocks = self.state_after(200)
        del blocks[next(iter(blocks))]
        self.write(blocks)
        self.assertRaises(AssertionError, writer_guest.verify_point_in_time,
                          self.path, 'raw')

    def test_empty_image(self):
        self.write({})
        self.assertEqual((0, None), writer_guest.verify_point_in_time(
            self.path, 'raw'))


class TestWriterGuest(WriterGuestTestCase):

    def test_boots_writes_and_answers_agent(self):
        guest = self._guest()
        self.assertTrue(guest.dom.isActive())
        self.assertTrue(guest.dom.isPersistent())
        self.assertEqual(guest.uuid, guest.dom.UUIDString())
        # The writer's disk is the domain's first disk.
        self.assertIn("<target dev='vda' bus='virtio'/>",
                      guest.dom.XMLDesc(0))
        first = guest.latest_seq()
        self.assertGreater(first, 0)
        self.assertGreater(guest.wait_for_seq(first + 20), first)
        self.assertTrue(guest.agent_ping())
        self.assertEqual('thawed', guest.fs_frozen_status())

    def test_fsfreeze_thaw(self):
        guest = self._guest()
        guest.wait_for_seq(1, label='fswriter')
        frozen = guest.dom.fsFreeze()
        try:
            self.assertGreater(frozen, 0)
            self.assertEqual('frozen', guest.fs_frozen_status())
            # One more line may report a write that completed before the
            # freeze: let the guest run a while (the raw writer advances)
            # first.  After that the writer on the frozen fs must stall
            # while the one on the raw disk goes on.
            guest.wait_for_seq(guest.latest_seq() + 50)
            fs_seq = guest.latest_seq('fswriter')
            guest.wait_for_seq(guest.latest_seq() + 100)
            self.assertEqual(fs_seq, guest.latest_seq('fswriter'))
        finally:
            thawed = guest.dom.fsThaw()
        self.assertGreater(thawed, 0)
        self.assertEqual('thawed', guest.fs_frozen_status())
        guest.wait_for_seq(fs_seq + 1, label='fswriter')

    def test_paused_copy_is_prefix(self):
        guest = self._guest()
        out_dir = self.useFixture(fixtures.TempDir()).path
        copy = os.path.join(out_dir, 'copy.raw')
        before = guest.wait_for_seq(guest.latest_seq() + 20)
        guest.dom.suspend()
        try:
            cmd = ['qemu-img', 'convert', '-f', guest.disk_format,
                   '-O', 'raw', guest.disk_path, copy]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  universal_newlines=True)
            if proc.returncode != 0:
                # A paused QEMU still holds the image's write lock.
                self.assertIn('lock', proc.stdout)
                cmd.insert(2, '-U')
                subprocess.run(cmd, check=True)
            self.addDetail('convert', content.text_content(
                ' '.join(cmd)))
        finally:
            guest.dom.resume()
        n = writer_guest.verify_prefix(copy, 'raw')
        self.assertGreaterEqual(n, before)
        # The writer goes on past the copy, and the disk stays a prefix.
        # (Paused again: a -U read of a disk being written is not
        # point-in-time, so it could show a hole.)
        guest.wait_for_seq(n + 20)
        guest.dom.suspend()
        try:
            later = writer_guest.verify_prefix(guest.disk_path,
                                               guest.disk_format,
                                               force_share=True)
        finally:
            guest.dom.resume()
        self.assertGreater(later, n)

    def test_full_disk_stops_without_wrapping(self):
        # 1 MiB raw disk: 256 blocks, full in ~1 s at 250/s.
        guest = self._guest(disk_mib=1, disk_format='raw', rate=250,
                            fs_disk=False, wait_agent=False)
        deadline = time.monotonic() + 60
        while b'writer seq=256 full' not in guest.console_bytes():
            self.assertLess(time.monotonic(), deadline,
                            'writer never reported full')
            time.sleep(0.2)
        guest.dom.suspend()
        self.assertEqual(256, writer_guest.verify_prefix(guest.disk_path,
                                                         'raw'))
        self.assertEqual(256, guest.latest_seq())
