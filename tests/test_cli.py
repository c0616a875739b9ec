"""experiments/run.py: a user's mistake ends in one line naming it, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override,named", [
    ("--config.sparsity=1.5", "sparsity=1.5 is outside [0, 1)"),
    ("--config.methods=nosuch", "unknown method 'nosuch'"),
    ("--config.sparsty=0.9", "unknown config key 'sparsty'; did you mean 'sparsity'?"),
    ("--config.sparsity=abc", "could not convert string to float"),
    ("--config.criterion=nosuch", "unknown criterion 'nosuch'"),
    ("--config.methods=ballot:nosuch", "unknown Ballot variant 'nosuch'"),
    ("--config.rewind_step=1000000", "rewind_step=1000000 is beyond the dense run's"),
])
def test_user_errors_are_one_line(tmp_path, override, named):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), override,
                           f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and named in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0]
    assert not (tmp_path / "w" / "seed_0").exists()  # nothing was trained


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), "--config.sparsity=1.5",
                           "--debug", f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
