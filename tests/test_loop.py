"""Tests of ballot_jax.loop: determinism, resume after SIGKILL, no recomputation of finished work.

These drive the stage machine alone (``tests/loop_job.py``: TinyNet on fake data) and compare
weights and votes, not only results. They are ``slow`` (about a minute per subprocess on 2 cores),
as are the whole-comparison kills of ``tests/test_experiment_resume.py``; CI runs both after the
default suite, which resumes in-process after a failed checkpoint write (``tests/test_reliability.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

JOB = os.path.join(os.path.dirname(__file__), "loop_job.py")


def _run(workdir, out, pause=""):
    return subprocess.Popen([sys.executable, JOB, str(workdir), str(out), str(pause)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    p = _run(d / "work", d / "out.npz")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return d / "work", _load(d / "out.npz")


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[1]


@pytest.mark.slow
def test_same_seed_same_votes_and_mask(reference, tmp_path):
    p = _run(tmp_path / "work", tmp_path / "out.npz")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    _assert_same(reference, _load(tmp_path / "out.npz"))
    # exact per-layer sparsity: the ballot mask keeps the magnitude ticket's per-layer counts
    kept = sum(int(v.sum()) for k, v in reference.items() if k.startswith("mask/"))
    total = sum(v.size for k, v in reference.items() if k.startswith("mask/"))
    assert kept == round(0.4 * total)


@pytest.mark.parametrize("stage,epoch", [
    pytest.param("dense", 0, marks=pytest.mark.slow),
    pytest.param("ticket", 1, marks=pytest.mark.slow),
    pytest.param("retrain", 0, marks=pytest.mark.slow),
])
def test_sigkill_then_resume_matches_uninterrupted(reference, tmp_path, stage, epoch):
    kill_at = f"EPOCH {stage} {epoch}"
    p = _run(tmp_path / "work", tmp_path / "out.npz", pause=f"{stage}:{epoch}")
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.strip() == kill_at:
            time.sleep(0.2)  # inside the pause: the epoch is done, its checkpoint not yet written
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(seen)
    assert not (tmp_path / "out.npz").exists()
    q = _run(tmp_path / "work", tmp_path / "out.npz")
    out, _ = q.communicate(timeout=600)
    assert q.returncode == 0, out
    _assert_same(reference, _load(tmp_path / "out.npz"))


@pytest.mark.slow
def test_finished_run_is_not_recomputed(tmp_path, reference_run, reference):
    workdir, _ = reference_run
    q = _run(workdir, tmp_path / "out2.npz", pause="any")  # any epoch would hang
    out, _ = q.communicate(timeout=300)
    assert q.returncode == 0, out
    assert "EPOCH" not in out
    _assert_same(reference, _load(tmp_path / "out2.npz"))
