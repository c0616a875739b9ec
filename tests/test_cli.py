"""experiments/run.py from the command line: one-line user errors (exit 2, no traceback) and the single-device path.

Each user error is checked through the command line's entry in this process (seconds saved per case:
a new process imports JAX); two of them, one found while parsing flags and one while running, go
through a real process too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import helpers

REPO = helpers.REPO


USER_ERRORS = [
    ("--config.sparsity=1.5", "sparsity=1.5 is outside [0, 1)"),
    ("--config.methods=nosuch", "unknown method 'nosuch'"),
    ("--config.sparsty=0.9", "unknown config key 'sparsty'; did you mean 'sparsity'?"),
    ("--config.sparsity=abc", "could not convert string to float"),
    ("--config.ballot.criterion=nosuch", "unknown criterion 'nosuch'"),
    ("--config.methods=ballot:nosuch", "unknown Ballot variant 'nosuch'"),
    ("--config.rewind_step=1000000", "rewind_step=1000000 is beyond the dense run's"),
]


def _assert_one_error_line(stderr: str, named: str) -> None:
    assert "Traceback" not in stderr and named in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0]


@pytest.mark.parametrize("override,named", USER_ERRORS)
def test_user_errors_are_one_line(tmp_path, capsys, override, named):
    """Each mistake through the command line's entry (flag parsing, then the run), in this process."""
    with pytest.raises(SystemExit) as exit_info:
        helpers.call_run_script(["--config=configs/quickstart.py", override, f"--workdir={tmp_path / 'w'}"],
                                as_command=True)
    assert exit_info.value.code == 2
    _assert_one_error_line(capsys.readouterr().err, named)
    assert not (tmp_path / "w" / "seed_0").exists()  # nothing was trained


@pytest.mark.parametrize("override,named", [USER_ERRORS[2], USER_ERRORS[6]])  # found parsing flags / running
def test_user_errors_end_the_process_with_status_2(tmp_path, override, named):
    """The real command: ``app.run`` with the one-line parser, exit status 2, no traceback."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"),
                           "--config=" + os.path.join(REPO, "configs", "quickstart.py"), override,
                           f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _assert_one_error_line(proc.stderr, named)
    assert not (tmp_path / "w" / "seed_0").exists()


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
