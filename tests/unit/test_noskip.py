"""tests/noskip.py: a skip anywhere in a test fails it.

The pytest.skip calls and the skipif mark below are text: the files these tests write for
pytester, which runs them apart in a temporary folder. They are the input under test; the two
tests of this module never skip, and each asserts the outcomes the inner run reports.
"""

from __future__ import annotations

import pytest


def test_a_test_that_skips_itself_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def missing_server():
            pytest.skip("no server")

        def test_skips_in_its_body():
            pytest.skip("not today")

        def test_skips_in_a_fixture(missing_server):
            pass

        @pytest.mark.skipif(True, reason="marked")
        def test_marked_skip():
            pass

        def test_runs():
            assert True
        """
    )
    result = pytester.runpytest("-p", "tests.noskip")
    result.assert_outcomes(passed=1, failed=1, errors=2)  # a skip in set-up fails as an error
    result.stdout.fnmatch_lines(["*skipped, which this suite does not allow*not today*"])


def test_without_the_plugin_the_same_tests_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_skips_in_its_body():
            pytest.skip("not today")
        """
    )
    pytester.runpytest().assert_outcomes(skipped=1)
