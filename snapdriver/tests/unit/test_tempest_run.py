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

"""tools/run-tempest.sh's logic that needs no box: counts, arguments,
the box stopped whatever happens.
"""

import io
import os
from unittest import mock

import fixtures
import subunit
import testtools

from snapdriver.box import services
from snapdriver.box import tempest_run


def _stream(outcomes):
    """A subunit v2 stream of tests ``name`` ending in ``status``."""
    buf = io.BytesIO()
    out = subunit.StreamResultToBytes(buf)
    for name, status in outcomes:
        out.status(test_id=name, test_status='inprogress')
        out.status(test_id=name, test_status=status)
    return buf.getvalue()


class CountTest(testtools.TestCase):

    def test_final_status_of_each_test(self):
        counts = tempest_run.count(_stream([
            ('t.a', 'success'), ('t.b', 'success'), ('t.c', 'skip'),
            ('t.d', 'fail'), ('t.e', 'uxsuccess'), ('t.f', 'xfail')]))
        self.assertEqual({'passed': 2, 'skipped': 1, 'failed': 2,
                          'other': 1}, counts)
        self.assertEqual('2 passed, 1 skipped, 2 failed, 1 other',
                         tempest_run.format_counts(counts))

    def test_empty_stream(self):
        counts = tempest_run.count(b'')
        self.assertEqual(0, sum(counts.values()))
        self.assertEqual('0 passed, 0 skipped, 0 failed',
                         tempest_run.format_counts(counts))


class ArgsTest(testtools.TestCase):

    def test_default_regex_is_the_image_tests(self):
        args = tempest_run.parse_args([])
        self.assertEqual(r'^tempest\.api\.compute\.images', args.regex)
        self.assertEqual(1, args.concurrency)
        self.assertIsNone(args.box_dir)

    def test_regex_and_concurrency(self):
        args = tempest_run.parse_args(['^tempest\\.api\\.compute\\.servers',
                                       '--concurrency', '2'])
        self.assertEqual('^tempest\\.api\\.compute\\.servers', args.regex)
        self.assertEqual(2, args.concurrency)


class MainTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.parent = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatchObject(
            tempest_run, 'BOX_PARENT', self.parent))
        self.useFixture(fixtures.MockPatchObject(
            services, 'unavailable_reason', return_value=None))
        self.useFixture(fixtures.EnvironmentVariable('SNAPDRIVER_BOX_KEEP'))
        self.stop = self.useFixture(fixtures.MockPatchObject(
            services.Box, 'stop', return_value=[])).mock
        self.out = io.StringIO()

    def test_box_stopped_and_removed_when_start_fails(self):
        with mock.patch.object(services.Box, 'start',
                               side_effect=services.BoxError('no rabbit')):
            rc = tempest_run.main([], out=self.out)
        self.assertEqual(1, rc)
        self.stop.assert_called_once_with(keep_logs=False)
        self.assertEqual([], os.listdir(self.parent))
        self.assertIn('FAILED: no rabbit', self.out.getvalue())

    def test_box_stopped_on_an_unexpected_error(self):
        with mock.patch.object(services.Box, 'start', return_value=1.0), \
                mock.patch.object(tempest_run.tempest_conf, 'create_flavor',
                                  side_effect=RuntimeError('boom')):
            self.assertRaises(RuntimeError, tempest_run.main, [],
                              out=self.out)
        self.stop.assert_called_once_with(keep_logs=False)
        self.assertEqual([], os.listdir(self.parent))

    def test_no_test_run_is_a_failure(self):
        def run(self_):
            self_.counts = tempest_run.count(b'')
            return 0
        with mock.patch.object(tempest_run.TempestRun, 'run', run):
            rc = tempest_run.main(['^nothing'], out=self.out)
        self.assertEqual(1, rc)
        self.assertIn('0 passed, 0 skipped, 0 failed (regex ^nothing)',
                      self.out.getvalue())
        self.stop.assert_called_once_with(keep_logs=False)

    def test_an_existing_box_dir_is_refused(self):
        err = self.useFixture(fixtures.MockPatch('sys.stderr',
                                                 io.StringIO())).mock
        rc = tempest_run.main(['--box-dir', self.parent], out=self.out)
        self.assertEqual(2, rc)
        self.assertIn('%s exists' % self.parent, err.getvalue())
        self.stop.assert_not_called()
