"""The test loop's own rules (tests/conftest.py, pytest.ini), checked on a throwaway suite.

Each check runs the real pytest of this virtualenv in a temporary directory holding copies of
the repository's conftest.py and pytest.ini and a small test file, so what is proven is what
`make unit` and CI get: a skip fails the run under CI, markers give the time limits, fixtures
carry their needs.
"""

import os
import shutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST = os.path.join(os.path.dirname(sys.executable), "pytest")


def run_suite(tmp_path, body: str, ci: bool, args=()) -> subprocess.CompletedProcess:
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tests / "conftest.py")
    shutil.copy(os.path.join(ROOT, "pytest.ini"), tmp_path / "pytest.ini")
    (tests / "test_x.py").write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ISCSI_HA_NO_SKIP")}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [PYTEST, "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SKIPPING = """
    import pytest

    def test_runs():
        assert True

    def test_cannot_run_here():
        pytest.skip("tool X is not installed")
"""


def test_a_skip_fails_the_run_under_ci_and_is_named(tmp_path):
    proc = run_suite(tmp_path, SKIPPING, ci=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skipped under CI (counts as a failure)" in proc.stdout
    assert "test_x.py::test_cannot_run_here: Skipped: tool X is not installed" in proc.stdout


def test_outside_ci_a_skip_is_reported_but_not_a_failure(tmp_path):
    proc = run_suite(tmp_path, SKIPPING, ci=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout


def test_deselected_by_marker_is_not_a_skip_under_ci(tmp_path):
    body = """
        import pytest

        def test_runs():
            assert True

        @pytest.mark.tools
        def test_needs_a_tool():
            assert False, "must not run: deselected"
    """
    proc = run_suite(tmp_path, body, ci=True, args=("-m", "not tools"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 deselected" in proc.stdout


def test_time_limits_by_marker_and_needs_by_fixture(tmp_path):
    body = """
        import pytest

        @pytest.fixture
        def pki():
            return "certificates"

        def limit(request):
            return request.node.get_closest_marker("timeout").args[0]

        def test_default_limit_comes_from_pytest_ini(request):
            assert request.node.get_closest_marker("timeout") is None
            assert request.config.getini("timeout") == "300"

        @pytest.mark.integration
        def test_integration_gets_more(request):
            assert limit(request) == 600

        @pytest.mark.vm
        def test_vm_gets_most(request):
            assert limit(request) == 1800

        @pytest.mark.vm
        @pytest.mark.timeout(7)
        def test_own_limit_wins(request):
            assert limit(request) == 7

        def test_fixture_brings_its_marker(request, pki):
            assert request.node.get_closest_marker("tools") is not None
    """
    proc = run_suite(tmp_path, body, ci=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


def test_a_hung_test_is_stopped_at_its_limit(tmp_path):
    body = """
        import time
        import pytest

        @pytest.mark.timeout(1)
        def test_hangs():
            time.sleep(30)
    """
    proc = run_suite(tmp_path, body, ci=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Timeout" in proc.stdout and "1 failed" in proc.stdout
