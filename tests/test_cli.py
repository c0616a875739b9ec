"""experiments/run.py from the command line: one-line user errors (exit 2, no traceback) and the single-device path."""

from __future__ import annotations

import json
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
    ("--config.ballot.criterion=nosuch", "unknown criterion 'nosuch'"),
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


def test_single_device_run(tmp_path):
    """The path most users take: one device, no mesh (the other tests see 8 simulated devices)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workdir = tmp_path / "one"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), f"--workdir={workdir}",
                           "--config.seeds=1", "--config.dense_epochs=1", "--config.retrain_epochs=1",
                           "--config.ballot.vote_epochs=1", "--config.methods=ballot,magnitude",
                           "--config.progress=False", "--config.plots=False", "--config.compilation_cache_dir="],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    timings = json.loads((workdir / "timings.json").read_text())
    assert timings["devices"] == 1
    results = json.loads((workdir / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["ballot", "magnitude"]
    for run in results["runs"]:
        assert run["mask_integrity"]["nonzero_masked_weights"] == 0
        assert run["sparsity"] == pytest.approx(0.8, abs=1e-3)
