"""The verifiers adapter in a venv with the real verifiers 0.4.0 (`make install-frameworks`),
against a real `rlme serve`: tests/verifiers_check.py scores traces with verifiers' own Task
and Trace, and a failed reward fails the trace (`has_error`), never a 0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import start_server

pytestmark = [pytest.mark.model, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-frameworks" / "bin" / "python"


@pytest.mark.skipif(not PYTHON.exists(), reason="no .venv-frameworks: run `make install-frameworks`")
def test_verifiers_scores_traces_and_a_failure_is_an_error(tmp_path: Path) -> None:
    with start_server(tmp_path, env={"OMP_NUM_THREADS": "1"}) as url:
        done = subprocess.run(
            [str(PYTHON), str(ROOT / "tests" / "verifiers_check.py")],
            env={**os.environ, "RLME_BASE_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verifiers check passed" in done.stdout
