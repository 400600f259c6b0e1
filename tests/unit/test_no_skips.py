"""The suite's own rule: a skipped test fails the run (see tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_a_skipped_test_fails_the_session(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_skips():\n    pytest.skip('no kernel')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stdout
    assert "1 test(s) skipped; this suite allows no skips" in result.stdout
    assert "test_sample.py::test_skips" in result.stdout
