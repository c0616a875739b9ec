"""Crash–resume and determinism of a whole comparison (``experiment.run_comparison``).

A tiny quickstart comparison (``tests/experiment_job.py``: dense, Ballot, magnitude, one seed) is
SIGKILLed at several points in turn — inside dense training, inside the voting trajectory, in the
middle of a checkpoint write (also inside voting), between two methods — each time rerun on the
same work directory, and must end with the uninterrupted run's ``results.json`` byte for byte and
the same masks, never retraining an epoch whose checkpoint had landed. Separately, two fresh
processes with the same seed write byte-identical ``results.json`` and another seed differs.
Every test here is ``slow`` (minutes of whole comparisons); CI runs them after the default suite,
which checks resuming at the loop level (``tests/test_reliability.py``, ``tests/test_loop.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

JOB = os.path.join(os.path.dirname(__file__), "experiment_job.py")
TIMEOUT = 900


def _job(workdir, pause: str = "", seed_offset: int = 0) -> tuple[list[tuple[str, str, int]], str, int]:
    """Runs the job until it finishes or reaches PAUSED (then SIGKILLs it).

    Returns (the epochs it trained as (run, stage, epoch), its whole output, return code).
    """
    p = subprocess.Popen([sys.executable, JOB, str(workdir), pause, str(seed_offset)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.strip() == "PAUSED":
                p.send_signal(signal.SIGKILL)
                break
        p.wait(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    return _epochs(lines), "".join(lines), p.returncode


def _epochs(lines) -> list[tuple[str, str, int]]:
    """The (run, stage, epoch) of every ``EPOCH`` line the job printed."""
    return [(w[1], w[2], int(w[3])) for w in (ln.split() for ln in lines) if len(w) == 4 and w[0] == "EPOCH"]


def _masks(workdir, method: str, seed: int = 0) -> dict[str, np.ndarray]:
    with np.load(os.path.join(workdir, f"seed_{seed}", method, "mask.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference") / "work"
    epochs, out, rc = _job(workdir)
    assert rc == 0 and "FINISHED" in out, out
    return workdir, epochs


# (pause point, whether the last epoch it printed was checkpointed before the kill)
DENSE = ("epoch:dense:dense:0", False)  # inside dense training: epoch 0 done, its checkpoint not written
VOTING = ("epoch:ballot:ticket:0", False)  # inside voting: the first vote cast, not yet checkpointed
MID_WRITE = ("ckpt:ballot:2", False)  # inside voting, mid-write of the checkpoint after the 2nd voting epoch
BETWEEN = ("after:ballot", True)  # between methods: Ballot finished, magnitude not started


@pytest.mark.parametrize("kills", [
    pytest.param([DENSE, MID_WRITE, BETWEEN], id="dense,mid-write,between", marks=pytest.mark.slow),
    pytest.param([DENSE, VOTING, MID_WRITE, BETWEEN], id="dense,voting,mid-write,between", marks=pytest.mark.slow),
])
def test_killed_comparison_resumes_to_identical_results(reference, tmp_path, kills) -> None:
    ref_dir, ref_epochs = reference
    workdir = tmp_path / "work"
    landed: set[tuple[str, str, int]] = set()  # epochs whose checkpoint was written
    for pause, last_landed in kills:
        epochs, out, rc = _job(workdir, pause)
        assert rc == -signal.SIGKILL, f"{pause}: the job was not killed at its pause point\n{out}"
        assert not landed & set(epochs), f"{pause}: retrained checkpointed epochs {sorted(landed & set(epochs))}"
        if pause.startswith("ckpt:"):
            # Checkpoints are written in the background: the epoch whose checkpoint was being written
            # when the job was killed, and any epoch trained meanwhile, have not landed.
            epochs = _epochs(out.split("WRITING", 1)[0].splitlines(keepends=True))
        landed |= set(epochs if last_landed else epochs[:-1])
        if pause.startswith("ckpt:"):
            assert any(".orbax-checkpoint-tmp" in name for name in os.listdir(workdir / "seed_0" / "ballot")), \
                "the kill did not leave a partly written checkpoint"
    epochs, out, rc = _job(workdir)
    assert rc == 0 and "FINISHED" in out, out
    assert not landed & set(epochs), f"retrained checkpointed epochs {sorted(landed & set(epochs))}"
    assert landed | set(epochs) == set(ref_epochs)

    assert (workdir / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()
    for method in ("ballot", "magnitude"):
        ref_masks, masks = _masks(ref_dir, method), _masks(workdir, method)
        assert ref_masks.keys() == masks.keys()
        for k in ref_masks:
            np.testing.assert_array_equal(masks[k], ref_masks[k], err_msg=f"{method} {k}")

    # A finished comparison is never recomputed: a rerun trains nothing and writes the same file.
    epochs, out, rc = _job(workdir)
    assert rc == 0 and epochs == [], out
    assert (workdir / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_other_seed_differs(reference, tmp_path) -> None:
    ref_dir, _ = reference
    _, out, rc = _job(tmp_path / "same")
    assert rc == 0, out
    assert (tmp_path / "same" / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()
    _, out, rc = _job(tmp_path / "other", seed_offset=1)
    assert rc == 0, out
    ref = json.loads((ref_dir / "results.json").read_text())
    other = json.loads((tmp_path / "other" / "results.json").read_text())
    assert [r["seed"] for r in other["runs"]] == [1, 1]
    for a, b in zip(ref["runs"], other["runs"]):
        assert a["method"] == b["method"]
        assert a["test"] != b["test"], f"{a['method']}: seeds 0 and 1 gave identical test metrics"
    assert any((_masks(ref_dir, m)[k] != _masks(tmp_path / "other", m, seed=1)[k]).any()
               for m in ("ballot", "magnitude") for k in _masks(ref_dir, m))
